"""(post, photo) -> entities in one call: ita_context feeds ita_ner."""
import pytest

from helpers import make_nlp
from spacy_ita import make_doc

pytest.importorskip("efficientnet_lite_pytorch")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def nlp(tiny_encoder, tmp_path_factory):
    """Tags from the real EfficientNet classifier (cheap); OCR off to keep this fast."""
    from PIL import Image

    nlp = make_nlp(tiny_encoder)
    nlp.add_pipe("ita_context", first=True, config={"ocr_text": None})
    nlp.get_pipe("ita_ner").initialize(lambda: [], nlp=nlp, labels=["PER", "ORG", "LOC"])
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(skimage_data.chelsea()).save(path)
    nlp.test_image = str(path)
    return nlp


def record_contexts(nlp, monkeypatch):
    """The context each doc reached the tagger's model with."""
    ner = nlp.get_pipe("ita_ner")
    seen = []
    original = ner.inputs

    def inference_inputs(docs):
        inputs = original(docs)
        seen.extend(item.context for item in inputs)
        return inputs

    monkeypatch.setattr(ner, "inputs", inference_inputs)
    return seen


def test_image_becomes_context_and_the_cross_view_is_used(nlp, monkeypatch):
    seen = record_contexts(nlp, monkeypatch)
    doc = nlp(make_doc(nlp, "Look who is home , Tom", nlp.test_image))
    assert doc._.image_error is None
    assert any("cat" in tag for tag in doc._.visual_context.object_tags)
    assert seen == [doc._.visual_context.render()]
    assert all(token.ent_iob_ in ("B", "I", "O") for token in doc)


def test_without_an_image_the_text_view_is_used(nlp, monkeypatch):
    seen = record_contexts(nlp, monkeypatch)
    doc = nlp(make_doc(nlp, "Look who is home , Tom"))
    assert doc._.visual_context is None
    assert seen == [None]


def test_a_broken_image_falls_back_to_the_text_view(nlp, monkeypatch, tmp_path):
    seen = record_contexts(nlp, monkeypatch)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.warns(UserWarning):
        docs = list(nlp.pipe([make_doc(nlp, "one", str(broken)), make_doc(nlp, "two", nlp.test_image)]))
    assert [doc.text for doc in docs] == ["one", "two"]
    assert docs[0]._.image_error and seen[0] is None
    assert seen[1] is not None
