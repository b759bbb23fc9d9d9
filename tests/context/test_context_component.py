"""The ita_context component with a cheap stand-in extractor: batching, bad
images, error policies, the persistent cache, precomputed contexts, config."""
import json
import warnings
from collections import Counter
from typing import Any, Dict, List

import pytest
import spacy
from PIL import Image, ImageStat

import spacy_ita  # noqa: F401  (Doc extensions)
from spacy_ita import VisualContext
from spacy_ita.context import make_doc, pipe_posts
from spacy_ita.context import component as component_module  # noqa: F401  (factory)
from spacy_ita.context.images import ImageError
from spacy_ita.context.ocr import TextFragment, make_tesseract, reading_order_lines
from spacy_ita.context.registry import ImageExtractor, extractors

from image_builders import bad_images, encoded

CALLS: Counter = Counter()
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


class ColourTagger(ImageExtractor):
    """Tags an image with its dominant channel; counts the images it sees."""

    name = "test.colour_tags.v1"
    field = "object_tags"

    def __init__(self, fail_on: str):
        self.fail_on = fail_on

    def settings(self) -> Dict[str, Any]:
        return {}

    def extract(self, images: List[Any]) -> List[List[str]]:
        CALLS["images"] += len(images)
        CALLS["batches"] += 1
        tags = []
        for image in images:
            means = ImageStat.Stat(image).mean
            tags.append([("red", "green", "blue")[means.index(max(means))]])
        if any(tag == [self.fail_on] for tag in tags):
            raise RuntimeError(f"cannot handle {self.fail_on}")
        return tags


@extractors.register("test.colour_tags.v1")
def make_colour_tagger(fail_on: str = "") -> ColourTagger:
    return ColourTagger(fail_on)


def colour_nlp(**config) -> spacy.language.Language:
    nlp = spacy.blank("en")
    settings = {"ocr_text": None, "object_tags": {"@spacy_ita_extractors": "test.colour_tags.v1"}}
    settings.update(config)
    nlp.add_pipe("ita_context", config=settings)
    return nlp


def good_images(tmp_path, n: int) -> List[Any]:
    """n images as paths, bytes and PIL images, cycling through the colours."""
    images: List[Any] = []
    for i in range(n):
        name = list(COLOURS)[i % 3]
        image = Image.new("RGB", (24 + i, 16), COLOURS[name])
        if i % 3 == 0:
            path = tmp_path / f"good_{i}.png"
            image.save(path)
            images.append(str(path))
        elif i % 3 == 1:
            images.append(encoded(image, "JPEG"))
        else:
            images.append(image)
    return images


def expected_tag(i: int) -> str:
    return list(COLOURS)[i % 3]


def test_a_batch_of_20_with_5_bad_images_keeps_all_docs_in_order(tmp_path):
    nlp = colour_nlp(batch_size=8)
    bad = list(bad_images(tmp_path / "bad").values())
    good = good_images(tmp_path, 15)
    images = good[:5] + bad[:2] + good[5:12] + bad[2:] + good[12:]
    texts = [f"post {i}" for i in range(20)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        docs = list(pipe_posts(nlp, zip(texts, images), batch_size=5))
    assert [doc.text for doc in docs] == texts
    with_context = [doc for doc in docs if not doc._.visual_context.is_empty()]
    failed = [doc for doc in docs if doc._.image_error is not None]
    assert len(with_context) == 15 and len(failed) == 5
    assert all(doc._.visual_context.is_empty() for doc in failed)
    good_docs = [doc for doc in docs if doc._.image_error is None]
    assert [doc._.visual_context.object_tags for doc in good_docs] == \
        [[expected_tag(i)] for i in range(15)]
    messages = [str(w.message) for w in caught if "ita_context" in str(w.message)]
    assert len(messages) == 5
    assert any("missing.jpg" in m and "does not exist" in m and "post 5" in m for m in messages)


def test_on_error_raise_and_ignore(tmp_path):
    missing = bad_images(tmp_path)["missing"]
    with pytest.raises(ImageError, match="missing.jpg"):
        colour_nlp(on_error="raise")(make_doc(spacy.blank("en"), "text", missing))
    nlp = colour_nlp(on_error="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doc = nlp(make_doc(nlp, "text", missing, image_id="9"))
    assert "does not exist" in doc._.image_error
    assert doc._.visual_context == VisualContext()
    with pytest.raises(ValueError, match="on_error"):
        colour_nlp(on_error="shout")


def test_an_extractor_failing_on_one_image_costs_only_that_doc():
    nlp = colour_nlp(object_tags={"@spacy_ita_extractors": "test.colour_tags.v1",
                                  "fail_on": "green"}, on_error="ignore")
    images = [Image.new("RGB", (8, 8), COLOURS[c]) for c in ("red", "green", "blue")]
    docs = list(pipe_posts(nlp, [("a", images[0]), ("b", images[1]), ("c", images[2])]))
    assert [d._.visual_context.object_tags for d in docs] == [["red"], [], ["blue"]]
    assert "cannot handle green" in docs[1]._.image_error
    assert docs[0]._.image_error is None and docs[2]._.image_error is None


def test_an_engine_out_of_time_may_pass_and_is_marked_retryable(tmp_path):
    slow = tmp_path / "slow_tesseract"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_context", config={"object_tags": None, "on_error": "ignore", "ocr_text": {
        "@spacy_ita_extractors": "spacy-ita.tesseract.v1", "binary": str(slow), "timeout": 0.5}})
    doc = nlp(make_doc(nlp, "x", Image.new("RGB", (30, 20), "white")))
    assert "TimeoutExpired" in doc._.image_error and doc._.context_retryable is True


def test_docs_without_an_image_are_left_alone():
    nlp = colour_nlp()
    doc = nlp("just text")
    assert doc._.visual_context is None and doc._.image_error is None


def test_existing_contexts_keep_merge_replace():
    red = Image.new("RGB", (8, 8), COLOURS["red"])
    for policy, expected in [("keep", ["cat"]), ("merge", ["cat", "red"]), ("replace", ["red"])]:
        nlp = colour_nlp(existing_context=policy)
        doc = make_doc(nlp, "post", red)
        doc._.visual_context = VisualContext(object_tags=["cat"], captions=["a cat"])
        nlp(doc)
        assert doc._.visual_context.object_tags == expected
        assert doc._.visual_context.captions == ([] if policy == "replace" else ["a cat"])


def test_the_cache_skips_the_model_and_returns_the_same_context(tmp_path):
    cache = str(tmp_path / "contexts.sqlite")
    image = encoded(Image.new("RGB", (10, 10), COLOURS["blue"]))
    CALLS.clear()
    first = colour_nlp(cache_path=cache)(make_doc(spacy.blank("en"), "x", image))
    assert CALLS["images"] == 1
    again = colour_nlp(cache_path=cache)  # a new pipeline: the cache is on disk
    second = again(make_doc(again, "y", image))
    assert CALLS["images"] == 1
    assert second._.visual_context == first._.visual_context
    assert second._.visual_context.object_tags == ["blue"]
    path = tmp_path / "same.png"
    path.write_bytes(image)
    again(make_doc(again, "z", str(path)))  # same content as a file: still a hit
    assert CALLS["images"] == 1
    colour_nlp(cache_path=cache, max_side=5)(make_doc(again, "w", image))
    assert CALLS["images"] == 2  # other settings, other key


def test_the_component_batches_images():
    CALLS.clear()
    nlp = colour_nlp(batch_size=4)
    images = [Image.new("RGB", (8, 8), COLOURS["red"]) for _ in range(10)]
    list(pipe_posts(nlp, [("t", image) for image in images], batch_size=100))
    assert CALLS["batches"] == 3 and CALLS["images"] == 10


def test_precomputed_caption_lines(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("1015799.jpg :a man holds a sign\n\n"
                        "1015799.jpg : a second caption\n"
                        "O_2094.jpg :Kobe at the Staples Center\n")
    nlp = colour_nlp(object_tags=None, captions={
        "@spacy_ita_extractors": "spacy-ita.precomputed.v1", "path": str(captions)})
    by_id = nlp(make_doc(nlp, "a", None, image_id="1015799"))
    by_missing_file = nlp(make_doc(nlp, "b", "/gone/images/O_2094.jpg"))
    unknown = nlp(make_doc(nlp, "c", None, image_id="123"))
    assert by_id._.visual_context.captions == ["a man holds a sign", "a second caption"]
    assert by_missing_file._.visual_context.captions == ["Kobe at the Staples Center"]
    assert by_missing_file._.image_error is None  # no pixel extractor needed the file
    assert unknown._.visual_context.is_empty()


def test_precomputed_jsonl_fills_all_fields_and_mixes_with_live_tags(tmp_path):
    path = tmp_path / "contexts.jsonl"
    record = {"image": "images/7.png", "captions": ["a red square"],
              "object_tags": ["square"], "ocr_text": ["STOP"]}
    path.write_text(json.dumps(record) + "\n")
    nlp = colour_nlp(captions={"@spacy_ita_extractors": "spacy-ita.precomputed.v1",
                               "path": str(path)})
    image = tmp_path / "7.png"
    Image.new("RGB", (8, 8), COLOURS["red"]).save(image)
    doc = nlp(make_doc(nlp, "post", str(image)))
    assert doc._.visual_context == VisualContext(
        object_tags=["red", "square"], captions=["a red square"], ocr_text=["STOP"])
    only_captions = colour_nlp(object_tags=None, captions={
        "@spacy_ita_extractors": "spacy-ita.precomputed.v1", "path": str(path),
        "fields": ["captions"]})
    doc = only_captions(make_doc(nlp, "post", None, image_id="7"))
    assert doc._.visual_context == VisualContext(captions=["a red square"])


def test_an_image_refused_before_the_component_stays_reported(tmp_path):
    """A doc whose image a reader refused (outside the image root, say) still
    gets its precomputed context by id, and keeps the refusal as its error."""
    captions = tmp_path / "captions.txt"
    captions.write_text("secret.png :a caption by id\n")
    nlp = colour_nlp(object_tags=None, captions={
        "@spacy_ita_extractors": "spacy-ita.precomputed.v1", "path": str(captions)})
    refused = make_doc(nlp, "post", None, image_id="secret")
    refused._.image_error, refused._.context_retryable = "outside the image root", True
    nlp(refused)
    assert refused._.visual_context.captions == ["a caption by id"]
    assert refused._.image_error == "outside the image root"
    assert refused._.context_retryable
    # A doc that has its image is read again: its outcome replaces an old error.
    again = make_doc(nlp, "post", str(tmp_path / "secret.png"))
    again._.image_error = "an earlier run's error"
    assert nlp(again)._.image_error is None


@pytest.mark.parametrize("content,where", [
    (b"1.jpg :fine\n2.jpg :caf\xe9\n", "latin1.txt:2: byte 0xe9"),
    ("1.jpg :fine\n".encode("utf-16"), "latin1.txt:1: byte 0xff at column 1 is not UTF-8"),
])
def test_precomputed_file_that_is_not_utf8_names_file_and_line(tmp_path, content, where):
    path = tmp_path / "latin1.txt"
    path.write_bytes(content)
    nlp = colour_nlp(object_tags=None, captions={
        "@spacy_ita_extractors": "spacy-ita.precomputed.v1", "path": str(path)})
    with pytest.raises(ValueError, match=where):
        nlp(make_doc(nlp, "x", None, image_id="1"))


def test_precomputed_file_with_bom_and_crlf(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_bytes("1.jpg :a red square\r\n2.jpg :café\r\n".encode("utf-8-sig"))
    nlp = colour_nlp(object_tags=None, captions={
        "@spacy_ita_extractors": "spacy-ita.precomputed.v1", "path": str(path)})
    for image_id, caption in (("1", "a red square"), ("2", "café")):
        doc = nlp(make_doc(nlp, "x", None, image_id=image_id))
        assert doc._.visual_context.captions == [caption]


def test_precomputed_files_are_checked(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1.jpg :fine\nno separator here\n")
    nlp = colour_nlp(object_tags=None, captions={
        "@spacy_ita_extractors": "spacy-ita.precomputed.v1", "path": str(bad)})
    with pytest.raises(ValueError, match="bad.txt:2: expected"):
        nlp(make_doc(nlp, "x", None, image_id="1"))
    with pytest.raises(FileNotFoundError):
        colour_nlp(captions={"@spacy_ita_extractors": "spacy-ita.precomputed.v1",
                             "path": str(tmp_path / "nope.txt")})


def test_pipeline_with_ita_context_saves_and_loads(tmp_path):
    nlp = colour_nlp(cache_path=str(tmp_path / "c.sqlite"), max_side=64)
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    component = loaded.get_pipe("ita_context")
    assert component.max_side == 64 and list(component.extractors) == ["object_tags"]
    doc = loaded(make_doc(loaded, "x", Image.new("RGB", (8, 8), COLOURS["green"])))
    assert doc._.visual_context.object_tags == ["green"]


def test_default_config_is_offline_ocr_and_tags_without_captions():
    from spacy_ita.context import ocr, tags

    loads_before = (ocr._rapidocr_engine.cache_info().misses,
                    tags._efficientnet.cache_info().misses)
    nlp = spacy.blank("en")
    component = nlp.add_pipe("ita_context")
    assert {slot: e.name for slot, e in component.extractors.items()} == {
        "object_tags": "spacy-ita.efficientnet_tags.v1", "ocr_text": "spacy-ita.rapidocr.v1"}
    assert component.cache is None and component.on_error == "warn"
    # Building the pipeline loads no model: that waits for the first image.
    assert (ocr._rapidocr_engine.cache_info().misses,
            tags._efficientnet.cache_info().misses) == loads_before


def test_reading_order_groups_lines_then_reads_left_to_right():
    fragments = [
        TextFragment("world", 120, 12, 200, 40),
        TextFragment("second", 10, 60, 100, 90),
        TextFragment("hello", 10, 10, 100, 38),
        TextFragment("line", 110, 62, 160, 92),
    ]
    assert reading_order_lines(fragments) == ["hello world", "second line"]


def test_tesseract_missing_binary_is_a_clear_error():
    with pytest.raises(RuntimeError, match="apt-get install tesseract-ocr"):
        make_tesseract(binary="no-such-tesseract-binary")


def test_a_config_of_the_old_knowledge_slot_says_how_to_move_it():
    """Pipelines saved before knowledge became ita_knowledge have `knowledge =
    null` in their ita_context block: that loads. A slot that was set fails
    with the way out (tests/knowledge/test_legacy_config.py has the LM's)."""
    nlp = colour_nlp(knowledge=None)
    assert "knowledge" not in nlp.get_pipe("ita_context").extractors
    with pytest.raises(ValueError, match=r"ita_context: the `knowledge` slot is gone; .* "
                                         r"delete \[components.ita_context.knowledge\]"):
        colour_nlp(knowledge={"@spacy_ita_extractors": "test.colour_tags.v1"})
