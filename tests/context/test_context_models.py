"""The real extractors, offline on CPU: EasyOCR and Tesseract read a rendered
sign, EfficientNet tags skimage photos, and the Hugging Face paths run end to
end on tiny randomly initialised models built here. Each model loads once."""
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import spacy  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

import spacy_ita  # noqa: E402,F401  (Doc extensions)
import spacy_ita.context.component  # noqa: E402,F401  (the ita_context factory)
from spacy_ita.context import make_doc, pipe_posts  # noqa: E402
from spacy_ita.context.captions import make_hf_captioner  # noqa: E402
from spacy_ita.context.ocr import make_easyocr, make_tesseract  # noqa: E402
from spacy_ita.context.tags import (make_efficientnet_tagger,  # noqa: E402
                                    make_hf_object_detector)

from image_builders import render_sign  # noqa: E402

TINY_LABELS = {0: "cat", 1: "cup", 2: "sign"}


@pytest.fixture(scope="module")
def sign() -> Image.Image:
    return render_sign(["STAPLES CENTER", "Los Angeles"])


@pytest.fixture(scope="module")
def photos():
    return {"chelsea": Image.fromarray(data.chelsea()), "coffee": Image.fromarray(data.coffee())}


@pytest.fixture(scope="module")
def easyocr_extractor():
    extractor = make_easyocr()
    extractor.load()
    return extractor


@pytest.fixture(scope="module")
def tagger():
    return make_efficientnet_tagger()


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> str:
    """A random 2-layer YOLOS (no timm backbone) with its image processor."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_yolos")
    config = YolosConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        image_size=[64, 64], patch_size=16, num_detection_tokens=5,
        id2label=TINY_LABELS, label2id={v: k for k, v in TINY_LABELS.items()},
    )
    YolosForObjectDetection(config).save_pretrained(path)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_captioner(tmp_path_factory) -> str:
    """A random ViT-encoder / BERT-decoder captioner with a 12-word tokenizer."""
    import torch
    from transformers import (BertConfig, BertTokenizerFast, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel, ViTConfig, ViTImageProcessor)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_captioner")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
             "a", "cat", "cup", "on", "the", "table", "sign"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    encoder = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, image_size=32, patch_size=8)
    decoder = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=37, is_decoder=True,
                         add_cross_attention=True, max_position_embeddings=64)
    model = VisionEncoderDecoderModel(
        config=VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.sep_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def test_easyocr_reads_a_rendered_sign_in_reading_order(easyocr_extractor, sign):
    (lines,) = easyocr_extractor.extract([sign])
    text = " ".join(lines).upper()
    assert "STAPLES" in text and "CENTER" in text
    assert text.index("STAPLES") < text.index("LOS")


def test_easyocr_uses_the_offline_weights_and_loads_once(easyocr_extractor):
    import easyocr_en_models

    assert easyocr_extractor.model_dir == easyocr_en_models.model_dir()
    assert make_easyocr().load() is easyocr_extractor.load()
    assert make_easyocr(min_confidence=0.9).load() is easyocr_extractor.load()


class CannedReader:
    """Stands in for easyocr.Reader: two fragments, one unsure."""

    def readtext(self, pixels):
        box = [[0, 0], [50, 0], [50, 20], [0, 20]]
        shifted = [[60, 2], [120, 2], [120, 22], [60, 22]]
        return [(shifted, "SURE", 0.9), (box, "UNSURE", 0.2)]


def test_easyocr_confidence_threshold_drops_fragments(monkeypatch, sign):
    extractor = make_easyocr(min_confidence=0.3)
    monkeypatch.setattr(extractor, "load", CannedReader)
    assert extractor.extract([sign]) == [["SURE"]]
    monkeypatch.setattr(extractor, "min_confidence", 0.1)
    assert extractor.extract([sign]) == [["UNSURE SURE"]]


@pytest.mark.skipif(shutil.which("tesseract") is None,
                    reason="tesseract binary absent (apt-get install tesseract-ocr)")
def test_tesseract_reads_a_rendered_sign(sign):
    (lines,) = make_tesseract().extract([sign])
    assert lines[0].upper() == "STAPLES CENTER"
    assert "Angeles" in " ".join(lines)


def test_efficientnet_tags_a_cat_and_a_coffee(tagger, photos):
    cat_tags, coffee_tags = tagger.extract([photos["chelsea"], photos["coffee"]])
    assert any("cat" in tag for tag in cat_tags), cat_tags
    assert set(coffee_tags) & {"espresso", "cup", "coffee mug"}, coffee_tags
    assert make_efficientnet_tagger(top_k=1).extract([photos["chelsea"]])[0] == cat_tags[:1]


def test_hf_object_detection_runs_on_a_tiny_model(tiny_detector, photos):
    detector = make_hf_object_detector(tiny_detector, threshold=0.0, top_k=None)
    outputs = detector.extract([photos["chelsea"], photos["coffee"]])
    assert len(outputs) == 2
    for labels in outputs:
        assert labels and len(labels) == len(set(labels))
        assert set(labels) <= set(TINY_LABELS.values())
    assert make_hf_object_detector(tiny_detector, threshold=1.01).extract(
        [photos["chelsea"]]) == [[]]


def test_hf_captioner_runs_on_a_tiny_model(tiny_captioner, photos):
    captioner = make_hf_captioner(tiny_captioner, max_new_tokens=4)
    outputs = captioner.extract([photos["chelsea"], photos["coffee"]])
    assert len(outputs) == 2
    for captions in outputs:
        assert len(captions) == 1 and isinstance(captions[0], str) and captions[0]


def test_default_pipeline_turns_posts_into_contexts_offline(easyocr_extractor, tagger, sign,
                                                            photos):
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_context")
    posts = [("Chelsea the cat", photos["chelsea"]), ("Game tonight!", sign),
             ("No picture", None)]
    cat, game, text_only = pipe_posts(nlp, posts)
    assert any("cat" in tag for tag in cat._.visual_context.object_tags)
    assert "STAPLES CENTER" in " ".join(game._.visual_context.ocr_text).upper()
    assert cat._.visual_context.captions == [] and text_only._.visual_context is None


def test_hf_extractors_in_the_component_config(tiny_detector, tiny_captioner, photos):
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_context", config={
        "ocr_text": None,
        "object_tags": {"@spacy_ita_extractors": "spacy-ita.hf_object_detection.v1",
                        "model": tiny_detector, "threshold": 0.0},
        "captions": {"@spacy_ita_extractors": "spacy-ita.hf_captioner.v1",
                     "model": tiny_captioner, "max_new_tokens": 4},
    })
    doc = nlp(make_doc(nlp, "A post", photos["coffee"]))
    assert doc._.visual_context.object_tags and len(doc._.visual_context.captions) == 1
    assert doc._.visual_context.ocr_text == []
