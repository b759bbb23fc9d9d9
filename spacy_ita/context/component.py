"""The `ita_context` pipeline component: `Doc._.image` -> `Doc._.visual_context`.

Each doc's image is read and hashed once, looked up in the optional persistent
cache, decoded (hardened, see `images.py`) only when some extractor still has
to run, and passed in batches to the configured extractors, one slot per
context field. A bad image gives that doc an empty context and a readable
`Doc._.image_error`; the other docs of the batch are processed normally.
`Doc._.context_retryable` says whether a failure may pass (a disk or network
error), so that a later run should try the doc again. Knowledge from a
language model is the next component's, `ita_knowledge` (spacy_ita.knowledge).
"""
import os
import subprocess
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional

from spacy.language import Language
from spacy.tokens import Doc
from spacy.util import minibatch

from ..visual_context import FIELDS, VisualContext, get_visual_context
# Imported to register the extractors they define.
from . import captions as _captions, ocr as _ocr, tags as _tags  # noqa: F401
from .cache import ContextCache
from .images import (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageError,
                     ImageSource, decode_image, read_image_source)
from .registry import Extractor, ExtractorFailure, ImageRecord, PartialContext

ON_ERROR_CHOICES = ("warn", "raise", "ignore")
EXISTING_CONTEXT_CHOICES = ("keep", "merge", "replace")
# The extractor slots in the order they run, each named after the field it fills.
SLOTS = ("object_tags", "captions", "ocr_text")

DEFAULT_CONFIG = {
    "object_tags": {"@spacy_ita_extractors": "spacy-ita.efficientnet_tags.v1"},
    "captions": None,
    "ocr_text": {"@spacy_ita_extractors": "spacy-ita.rapidocr.v1"},
    "cache_path": None,
    "on_error": "warn",
    "max_pixels": DEFAULT_MAX_PIXELS,
    "max_side": DEFAULT_MAX_SIDE,
    "max_bytes": DEFAULT_MAX_BYTES,
    "batch_size": 16,
    "existing_context": "keep",
}

# Extractor errors that may pass on a later run: a network or disk error, an
# engine (such as the tesseract binary) that ran out of its time.
MAY_PASS = (OSError, subprocess.TimeoutExpired)

@dataclass
class _Post:
    """The work state of one doc within a batch."""

    doc: Doc
    record: ImageRecord
    source: Optional[ImageSource] = None
    error: Optional[str] = None  # about the image and the slots that read it
    retryable: bool = False  # some failure may pass: a later run should try again
    parts: Dict[str, PartialContext] = field(default_factory=dict)

    def fail(self, message: str, retryable: bool = False) -> None:
        self.retryable = self.retryable or retryable
        self.error = message if self.error is None else f"{self.error}; {message}"


class ItaContext:
    """Fills `Doc._.visual_context` from `Doc._.image` with object tags,
    captions and OCR text from the configured extractors."""

    def __init__(
        self,
        name: str,
        *,
        object_tags: Optional[Extractor],
        captions: Optional[Extractor],
        ocr_text: Optional[Extractor],
        cache_path: Optional[str],
        on_error: str,
        max_pixels: int,
        max_side: Optional[int],
        max_bytes: int,
        batch_size: int,
        existing_context: str,
    ):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        if existing_context not in EXISTING_CONTEXT_CHOICES:
            raise ValueError(f"existing_context must be one of {EXISTING_CONTEXT_CHOICES}, "
                             f"got {existing_context!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        slots = {"object_tags": object_tags, "captions": captions, "ocr_text": ocr_text}
        self.extractors: Dict[str, Extractor] = {
            slot: extractor for slot, extractor in slots.items() if extractor is not None
        }
        self.cache = ContextCache(cache_path) if cache_path else None
        self.on_error = on_error
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        self.existing_context = existing_context

    @property
    def pixel_extractors(self) -> Dict[str, Extractor]:
        """The extractors that read the image (a lookup table does not)."""
        return {slot: e for slot, e in self.extractors.items() if e.reads_pixels}

    def cache_key(self, extractor: Extractor) -> str:
        return f"{extractor.cache_key} max_side={self.max_side}"

    def preflight(self) -> None:
        """Check what a run needs from its environment before any doc: the cache
        opens and takes writes, and each extractor's preflight passes (a
        binary installed, say). Raises with the reason."""
        if self.cache is not None:
            self.cache.check()
        for extractor in self.extractors.values():
            extractor.preflight()

    def __call__(self, doc: Doc) -> Doc:
        self._process([doc])
        return doc

    def pipe(self, stream: Iterable[Doc], batch_size: Optional[int] = None) -> Iterator[Doc]:
        """Process docs in batches of at most `self.batch_size` decoded images
        (spaCy's larger `batch_size` only lowers it), yielding them in order."""
        size = min(batch_size or self.batch_size, self.batch_size)
        for batch in minibatch(stream, size):
            self._process(batch)
            yield from batch

    def _process(self, docs: List[Doc]) -> None:
        posts = [self._post(doc) for doc in docs if self._wants(doc)]
        if not posts:
            return
        self._read_and_decode(posts)
        for slot, extractor in self.extractors.items():
            todo = [post for post in posts if slot not in post.parts and
                    (post.record.image is not None or not extractor.needs_pixels)]
            self._run(slot, extractor, todo)
        for post in posts:
            post.record.image = None
            post.doc._.visual_context = self._merge(post.doc, post.parts)
            self._put_error(post)
            if post.error is not None:
                self._report(post)

    @staticmethod
    def _put_error(post: _Post) -> None:
        """Put the post's outcome on its doc. A doc without an image keeps the
        error it came with (an image refused before this component) in front."""
        doc = post.doc
        if doc._.image is None and doc._.image_error is not None:
            doc._.image_error = "; ".join(filter(None, (doc._.image_error, post.error)))
            doc._.context_retryable = bool(doc._.context_retryable) or post.retryable
        else:
            doc._.image_error, doc._.context_retryable = post.error, post.retryable

    def _wants(self, doc: Doc) -> bool:
        if doc._.visual_context is not None and self.existing_context == "keep":
            return False
        has_lookup = any(not e.needs_pixels for e in self.extractors.values())
        return doc._.image is not None or (has_lookup and doc._.image_id is not None)

    def _post(self, doc: Doc) -> _Post:
        image, image_id = doc._.image, doc._.image_id
        file_name = (os.path.basename(os.fspath(image))
                     if isinstance(image, (str, os.PathLike)) else None)
        record = ImageRecord(None, None if image_id is None else str(image_id), file_name)
        return _Post(doc, record)

    def _read_and_decode(self, posts: List[_Post]) -> None:
        """Read each image, take what the cache has, decode the ones still needed."""
        pixel_slots = self.pixel_extractors
        if not pixel_slots:
            return
        keys = {slot: self.cache_key(extractor) for slot, extractor in pixel_slots.items()}
        for post in posts:
            if post.doc._.image is None:
                continue
            try:
                post.source = read_image_source(post.doc._.image, self.max_bytes,
                                                self.max_pixels)
                if self.cache is not None:
                    for slot, key in keys.items():
                        cached = self.cache.get(post.source.content_hash, key)
                        if cached is not None:
                            post.parts[slot] = cached
                if any(slot not in post.parts for slot in pixel_slots):
                    post.record.image = decode_image(post.source, self.max_pixels,
                                                     self.max_side)
            except ImageError as err:
                post.fail(str(err))

    def _run(self, slot: str, extractor: Extractor, posts: List[_Post]) -> None:
        """Run one extractor over a batch; if the batch fails, retry image by
        image so that one failing image only costs its own context, and an
        ExtractorFailure in the output costs only its post's. Loading the
        model stays outside that net: a broken setup fails loudly."""
        if not posts:
            return
        extractor.load()
        try:
            outputs = extractor([post.record for post in posts])
        except Exception as err:
            if self.on_error == "raise":
                raise
            if len(posts) > 1:
                for post in posts:
                    self._run(slot, extractor, [post])
            else:
                posts[0].fail(f"{extractor.name} failed: {type(err).__name__}: {err}",
                              retryable=isinstance(err, MAY_PASS))
            return
        self._check_outputs(extractor, outputs, len(posts))
        key, rows = self.cache_key(extractor), []
        for post, output in zip(posts, outputs):
            if isinstance(output, ExtractorFailure):
                post.fail(f"{extractor.name} failed: {output.reason}", output.retryable)
                continue
            post.parts[slot] = output
            if self.cache is not None and extractor.cacheable and post.source is not None:
                rows.append((post.source.content_hash, key, output))
        if self.cache is not None:
            self.cache.put_many(rows)

    @staticmethod
    def _check_outputs(extractor: Extractor, outputs: List[PartialContext], n: int) -> None:
        if len(outputs) != n:
            raise ValueError(f"{extractor.name} returned {len(outputs)} contexts for {n} images")
        for output in outputs:
            if isinstance(output, ExtractorFailure):
                continue
            unknown = set(output) - set(FIELDS)
            if unknown:
                raise ValueError(f"{extractor.name} returned unknown field(s) "
                                 f"{sorted(unknown)}; expected some of {FIELDS}")

    def _merge(self, doc: Doc, parts: Dict[str, PartialContext]) -> VisualContext:
        """The extractors' output in slot order, after the doc's own context when
        existing_context is "merge"; exact repeats are dropped."""
        existing = get_visual_context(doc)
        merging = existing is not None and self.existing_context == "merge"
        sources = [existing.to_dict()] if merging else []
        sources += [parts[slot] for slot in SLOTS if slot in parts]
        merged: Dict[str, Dict[str, None]] = {name: {} for name in FIELDS}  # ordered sets
        for part in sources:
            for name, texts in part.items():
                merged[name].update(dict.fromkeys(texts))
        return VisualContext(**{name: list(texts) for name, texts in merged.items()})

    def _report(self, post: _Post) -> None:
        report_failure(f"{self.name}: no visual context from the image of", post.doc,
                       post.error, self.on_error, ImageError)


def report_failure(what: str, doc: Doc, reason: Optional[str], on_error: str,
                   error: type) -> None:
    """Raise `error` or warn, as `on_error` says, that `doc` (named by its
    text and image id) lost what `what` says, and why."""
    where = f"doc {doc.text[:40]!r}"
    if doc._.image_id is not None:
        where += f" (image_id {str(doc._.image_id)!r})"
    message = f"{what} {where}: {reason}"
    if on_error == "raise":
        raise error(message)
    if on_error == "warn":
        warnings.warn(message, stacklevel=4)


@Language.factory(
    "ita_context",
    default_config=DEFAULT_CONFIG,
    assigns=["doc._.visual_context", "doc._.image_error", "doc._.context_retryable"],
    requires=["doc._.image"],
)
def make_ita_context(
    nlp: Language,
    name: str,
    object_tags: Optional[Extractor],
    captions: Optional[Extractor],
    ocr_text: Optional[Extractor],
    cache_path: Optional[str],
    on_error: str,
    max_pixels: int,
    max_side: Optional[int],
    max_bytes: int,
    batch_size: int,
    existing_context: str,
    knowledge: Any = None,
) -> ItaContext:
    """Create the `ita_context` component. Each extractor slot fills the
    context field of its name; slots set to null are off. `cache_path` names
    an SQLite file that keeps contexts across runs; `on_error` is "warn",
    "raise" or "ignore" for unreadable images, including files over
    `max_bytes` and images over `max_pixels`; `existing_context` says what
    happens to a doc that already has a context: "keep" it untouched, "merge"
    the extracted text into it, or "replace" it. `knowledge` is the slot of
    configs saved before knowledge became `ita_knowledge`: null loads, a
    setting fails with the blocks that replace it."""
    if knowledge is not None:
        # The one way from images to knowledge, and only for an old config's
        # message: knowledge depends on context, not the reverse.
        from ..knowledge.legacy import moved_message

        raise ValueError(moved_message(knowledge, name, {
            "on_error": on_error, "cache_path": cache_path, "max_side": max_side}))
    return ItaContext(
        name, object_tags=object_tags, captions=captions, ocr_text=ocr_text,
        cache_path=cache_path,
        on_error=on_error, max_pixels=max_pixels, max_side=max_side,
        max_bytes=max_bytes, batch_size=batch_size, existing_context=existing_context,
    )
