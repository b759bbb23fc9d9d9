"""The precomputed lookup (spacy-ita.precomputed.v1): which entry a doc gets,
and how a bad file is reported."""
import pytest
import spacy

import spacy_ita  # noqa: F401  (Doc extensions)
from spacy_ita.context import make_doc
from spacy_ita.context import component as component_module  # noqa: F401  (factory)


def precomputed_nlp(path) -> spacy.language.Language:
    """A pipeline whose only extractor is the lookup in `path`: no image is read."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_context", config={
        "ocr_text": None, "object_tags": None,
        "captions": {"@spacy_ita_extractors": "spacy-ita.precomputed.v1", "path": str(path)}})
    return nlp


def test_an_exact_file_name_wins_over_a_shared_stem(tmp_path):
    """A folder run gives each doc its stem as image_id: photo.png must still
    get its own line, not photo.jpg's, which shares the stem."""
    captions = tmp_path / "captions.txt"
    captions.write_text("photo.jpg :a red square\nphoto.png :a blue square\n"
                        "img.2023.jpg :a dotted name\n")
    nlp = precomputed_nlp(captions)

    def caption(image, image_id):
        return nlp(make_doc(nlp, "x", image, image_id=image_id))._.visual_context.captions

    assert caption(str(tmp_path / "photo.png"), "photo") == ["a blue square"]
    assert caption(str(tmp_path / "photo.jpg"), "photo") == ["a red square"]
    # The fallbacks stay: an id without extension, a dotted one, another folder.
    assert caption(None, "photo") == ["a red square"]
    assert caption(None, "img.2023") == ["a dotted name"]
    assert caption("/elsewhere/photo.png", None) == ["a blue square"]


@pytest.mark.parametrize("value", ["1" * 5000, "[" * 100_000 + "]" * 100_000])
def test_json_that_python_refuses_names_the_file_and_line(tmp_path, value):
    """A number over Python's digit limit, or nesting past its recursion
    limit, is bad JSON of a line like any other."""
    path = tmp_path / "contexts.jsonl"
    path.write_text('{"image": "a.png", "captions": ["ok"]}\n'
                    '{"image": "b.png", "n": ' + value + "}\n")
    nlp = precomputed_nlp(path)
    with pytest.raises(ValueError, match=r"contexts\.jsonl:2: invalid JSON: "):
        nlp(make_doc(nlp, "x", None, image_id="a"))
