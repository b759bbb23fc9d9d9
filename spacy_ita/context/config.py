"""The `ita_context` config for a choice of extractors, shared by the CLI
(`extract`, `apply`, `package`) and the library (`bulk` adds an ita_context
to a pipeline that has none), so that the library never imports the CLI."""
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional


class OCREngine(str, Enum):
    """The OCR engines `ita_context` can be built with by name."""

    rapidocr = "rapidocr"
    easyocr = "easyocr"
    tesseract = "tesseract"
    none = "none"


def context_config(
    ocr: OCREngine = OCREngine.rapidocr,
    tags: bool = True,
    detector: Optional[str] = None,
    captioner: Optional[str] = None,
    precomputed: Optional[Path] = None,
    cache: Optional[Path] = None,
    gpu: bool = False,
    batch_size: int = 16,
    existing_context: str = "merge",
) -> Dict[str, Any]:
    """The `ita_context` config for the options of `extract` (and `apply`)."""
    config: Dict[str, Any] = {"cache_path": str(cache) if cache else None,
                              "on_error": "ignore", "batch_size": batch_size,
                              "existing_context": existing_context}
    device = "cuda" if gpu else "cpu"
    if ocr == OCREngine.rapidocr:
        config["ocr_text"] = {"@spacy_ita_extractors": "spacy-ita.rapidocr.v1"}
    elif ocr == OCREngine.easyocr:
        config["ocr_text"] = {"@spacy_ita_extractors": "spacy-ita.easyocr.v1", "gpu": gpu}
    elif ocr == OCREngine.tesseract:
        config["ocr_text"] = {"@spacy_ita_extractors": "spacy-ita.tesseract.v1"}
    else:
        config["ocr_text"] = None
    if detector:
        config["object_tags"] = {"@spacy_ita_extractors": "spacy-ita.hf_object_detection.v1",
                                 "model": detector, "device": device}
    elif not tags:
        config["object_tags"] = None
    if captioner and precomputed:
        raise ValueError("--captioner and --precomputed both fill the captions slot; "
                         "choose one")
    if captioner:
        config["captions"] = {"@spacy_ita_extractors": "spacy-ita.hf_captioner.v1",
                              "model": captioner, "device": device}
    elif precomputed:
        config["captions"] = {"@spacy_ita_extractors": "spacy-ita.precomputed.v1",
                              "path": str(precomputed)}
    return config
