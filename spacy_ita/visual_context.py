"""The visual context of a post: the image turned into text (ITA's alignment),
plus knowledge about the post from a language model or any other source.

`VisualContext` is what the `ita_context` component writes and what `ita_ner`
reads. Importing `spacy_ita` registers it with srsly's msgpack hooks, so
`Doc._.visual_context` survives `Doc.to_bytes`, `DocBin` and `doc.copy()`.
(Not through srsly entry points: those load while spaCy itself is importing.)
"""
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import srsly
from spacy.tokens import Doc

FIELDS = ("captions", "object_tags", "ocr_text", "knowledge")
# ita_ner's default: knowledge first, since a context too long for the encoder is cut at its end.
DEFAULT_ORDER = ("knowledge", "captions", "object_tags", "ocr_text")
_MSGPACK_KEY = "__spacy_ita_visual_context__"
# A lone half of a UTF-16 pair (`"\ud83d"` in JSON, an emoji cut in two): not text,
# so no UTF-8 encoder (a cache's, an output writer's, a tokenizer's) takes it.
SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class VisualContext:
    """Text describing a post's image (object tags, captions, OCR lines) and
    knowledge about the post (for example a language model's list of the
    entities it mentions, see `spacy_ita.knowledge.mentions`)."""

    object_tags: List[str] = field(default_factory=list)
    captions: List[str] = field(default_factory=list)
    ocr_text: List[str] = field(default_factory=list)
    knowledge: List[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check that every field is a list of strings (a tuple becomes a list).

        Runs on construction and again whenever `ita_ner` or `ita_context`
        reads `Doc._.visual_context`: the fields are mutable lists.
        """
        for name in FIELDS:
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise TypeError(
                    f"VisualContext.{name} must be a list of strings, "
                    f"got {type(value).__name__}: {value!r:.80}"
                )
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise TypeError(
                        f"VisualContext.{name}[{i}] must be a string, "
                        f"got {type(item).__name__}: {item!r:.80}"
                    )
                if SURROGATE.search(item):
                    raise ValueError(
                        f"VisualContext.{name}[{i}] contains a lone surrogate (half of a "
                        f"UTF-16 pair, e.g. a cut emoji), which is not text: {item!r:.80}"
                    )
            if not isinstance(value, list):
                setattr(self, name, list(value))

    def is_empty(self) -> bool:
        return not any(text.strip() for name in FIELDS for text in getattr(self, name))

    def render(
        self,
        order: Sequence[str] = DEFAULT_ORDER,
        item_separator: str = " ",
        field_separator: str = " ",
    ) -> str:
        """Join the context into the string appended to the sentence.

        order names the fields to include (default: knowledge, captions, object
        tags, OCR);
        items within a field are joined by item_separator, fields by
        field_separator. Empty items and fields are skipped.
        """
        unknown = [name for name in order if name not in FIELDS]
        if unknown:
            raise ValueError(f"Unknown visual context field(s) {unknown}; expected {FIELDS}")
        parts = []
        for name in order:
            items = [text.strip() for text in getattr(self, name) if text.strip()]
            if items:
                parts.append(item_separator.join(items))
        return field_separator.join(parts)

    def to_dict(self) -> Dict[str, List[str]]:
        return {name: list(getattr(self, name)) for name in FIELDS}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "VisualContext":
        if not isinstance(data, dict):
            raise TypeError(f"Expected a dict for VisualContext, got {type(data).__name__}")
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise ValueError(
                f"Unknown visual context field(s) {sorted(unknown)}; expected {FIELDS}"
            )
        return cls(**{name: data.get(name, []) for name in FIELDS})


def get_visual_context(doc: Doc, doc_index: Optional[int] = None) -> Optional[VisualContext]:
    """Read and validate `doc._.visual_context`; a dict is accepted and converted.

    Raises TypeError/ValueError naming the doc when the value is malformed, so
    bad input never surfaces as an error deep inside the model.
    """
    value = doc._.visual_context
    if value is None:
        return value
    if isinstance(value, dict) and _MSGPACK_KEY in value:
        # Deserialised in a process that had not imported spacy_ita yet.
        value = value[_MSGPACK_KEY]
    where = f"doc {doc_index}" if doc_index is not None else "doc"
    where = f"{where} ({doc.text[:40]!r})"
    if isinstance(value, (VisualContext, dict)):
        try:
            if isinstance(value, VisualContext):
                value.validate()  # it may have been changed since it was made
                return value
            return VisualContext.from_dict(value)
        except (TypeError, ValueError) as err:
            raise type(err)(f"Invalid Doc._.visual_context on {where}: {err}") from None
    raise TypeError(
        f"Doc._.visual_context on {where} must be a spacy_ita.VisualContext, a dict "
        f"or None, got {type(value).__name__}"
    )


def encode_visual_context(obj: Any, chain: Optional[Callable] = None) -> Any:
    """srsly msgpack encoder hook for VisualContext."""
    if isinstance(obj, VisualContext):
        return {_MSGPACK_KEY: obj.to_dict()}
    return obj if chain is None else chain(obj)


def decode_visual_context(obj: Any, chain: Optional[Callable] = None) -> Any:
    """srsly msgpack decoder hook for VisualContext. A malformed value stays
    wrapped, so that `get_visual_context` names the doc holding it instead of
    msgpack failing the whole file."""
    if isinstance(obj, dict) and _MSGPACK_KEY in obj:
        try:
            return VisualContext.from_dict(obj[_MSGPACK_KEY])
        except (TypeError, ValueError):
            return obj
    return obj if chain is None else chain(obj)


def install_extensions() -> None:
    """Register the Doc extensions and msgpack hooks (idempotent)."""
    srsly.msgpack_encoders.register("spacy_ita_visual_context", func=encode_visual_context)
    srsly.msgpack_decoders.register("spacy_ita_visual_context", func=decode_visual_context)
    for name in ("image", "image_id", "visual_context", "image_error", "knowledge_error",
                 "context_retryable", "ita_view"):
        if not Doc.has_extension(name):
            Doc.set_extension(name, default=None)
