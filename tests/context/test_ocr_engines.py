"""RapidOCR, the default OCR engine: offline models from its wheel, lines in
reading order, its own confidence filter, one engine per setting and process."""
import builtins
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import spacy  # noqa: E402
from PIL import Image  # noqa: E402

import spacy_ita.context.component  # noqa: E402,F401  (the ita_context factory)
from spacy_ita.context import make_doc, ocr  # noqa: E402
from spacy_ita.context.ocr import make_rapidocr  # noqa: E402

from image_builders import render_sign  # noqa: E402

pytest.importorskip("rapidocr")


@pytest.fixture(scope="module")
def rapid():
    return make_rapidocr()


def test_rapidocr_reads_a_rendered_sign_in_reading_order(rapid):
    sign = render_sign(["STAPLES CENTER", "Los Angeles"])
    (lines,) = rapid.extract([sign])
    assert [line.upper() for line in lines] == ["STAPLES CENTER", "LOS ANGELES"]


def test_rapidocr_finds_nothing_on_a_blank_image(rapid):
    assert rapid.extract([Image.new("RGB", (200, 120), "white")]) == [[]]


def test_rapidocr_loads_once_per_setting(rapid):
    assert make_rapidocr().load() is rapid.load()
    assert make_rapidocr(max_side=640).load() is not rapid.load()


class CannedOutput:
    boxes = [[[60, 2], [120, 2], [120, 22], [60, 22]], [[0, 0], [50, 0], [50, 20], [0, 20]]]
    txts = ("SURE", "UNSURE")
    scores = (0.9, 0.6)


def test_rapidocr_confidence_threshold_drops_fragments(monkeypatch):
    extractor = make_rapidocr(min_confidence=0.7)
    monkeypatch.setattr(extractor, "load", lambda: lambda image: CannedOutput())
    assert extractor.extract([None]) == [["SURE"]]
    monkeypatch.setattr(extractor, "min_confidence", 0.5)
    assert extractor.extract([None]) == [["UNSURE SURE"]]


def test_rapidocr_threads_follow_torch_unless_set(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert ocr.default_thread_count() == 3
    assert make_rapidocr(threads=2).threads == 2


def test_a_missing_rapidocr_names_the_packages(monkeypatch):
    real_import = builtins.__import__

    def no_rapidocr(name, *args, **kwargs):
        if name == "rapidocr":
            raise ImportError("no module named rapidocr")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rapidocr)
    with pytest.raises(RuntimeError, match="pip install rapidocr onnxruntime"):
        make_rapidocr(max_side=333).load()


def test_rapidocr_refuses_a_tiny_max_side():
    with pytest.raises(ValueError, match="max_side must be at least 32"):
        make_rapidocr(max_side=8)


def test_the_default_component_reads_text_with_rapidocr():
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_context", config={"object_tags": None})
    doc = nlp(make_doc(nlp, "Game tonight", render_sign(["SQUARE GARDEN"])))
    assert doc._.visual_context.ocr_text == ["SQUARE GARDEN"]
