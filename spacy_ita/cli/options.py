"""Options that several commands share: how a trained pipeline is completed
and run (`apply`, `serve`)."""
from pathlib import Path
from typing import Optional

import typer

from ..context.config import OCREngine

PIPELINE_OPTIONS = {
    "ocr": typer.Option(OCREngine.rapidocr, "--ocr", metavar="ENGINE",
                        help="OCR engine of the ita_context added to a pipeline "
                        "that has none: rapidocr, easyocr, tesseract or none."),
    "tags": typer.Option(True, "--tags/--no-tags",
                         help="EfficientNet object tags in that ita_context."),
    "add_context": typer.Option(
        True, "--context/--no-context",
        help="Add ita_context to a pipeline without one (images -> visual context)."),
    "cache": typer.Option(None, "--cache", metavar="FILE",
                          help="SQLite cache of visual contexts, shared across runs."),
    "gpu_id": typer.Option(-1, "--gpu-id", "-g", help="GPU for the tagger; -1 for CPU."),
    "precision": typer.Option(
        None, "--precision", metavar="MODE",
        help="ita_ner's encoder: auto (bf16 where native), bf16 or fp32 (default: the "
        "pipeline's own)."),
    "code": typer.Option(None, "--code", exists=True, dir_okay=False,
                         help="Python file with custom components to import."),
    "allow_private_urls": typer.Option(
        False, "--allow-private-urls",
        help="Also fetch image URLs on loopback, private, link-local, multicast and "
        "reserved addresses."),
}


def pipeline_settings(add_context: bool, ocr: OCREngine, tags: bool, cache: Optional[Path],
                      gpu_id: int, precision: Optional[str], code: Optional[Path]):
    """The PipelineSettings that PIPELINE_OPTIONS' values ask for."""
    from ..bulk import PipelineSettings

    return PipelineSettings(add_context, ocr.value, tags, cache, gpu_id, precision, code)
