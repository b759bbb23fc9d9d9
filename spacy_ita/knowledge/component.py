"""The `ita_knowledge` pipeline component: a post's text (with what its image
gave, and optionally the image) -> `VisualContext.knowledge`, from a language model.

It sits after `ita_context` and reads the visual context found so far. As in
spacy-llm, the component only runs the loop; a task (`mentions_task`) builds
the prompt and parses the answer, a model (`openai_compatible`) makes the
calls, and the SQLite cache of `ita_context` keeps the answers across runs.
Failed knowledge gives an empty `knowledge` field and `Doc._.knowledge_error`;
`Doc._.context_retryable` says whether the failure may pass.
"""
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterable, Iterator, List, Optional

from spacy.language import Language
from spacy.pipeline import Pipe
from spacy.tokens import Doc
from spacy.util import minibatch

from ..context.cache import ContextCache
from ..context.component import ON_ERROR_CHOICES, report_failure
from ..context.images import (DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, ImageError,
                              ImageSource, decode_image, read_image_source)
from ..visual_context import VisualContext, get_visual_context
from .client import CallFailure, OpenAICompatible
from .task import AnswerError, MentionsTask

EXISTING_KNOWLEDGE_CHOICES = ("keep", "merge", "replace")
# What answers are cached under: the name the knowledge had when it was a slot
# of ita_context, so that a cache filled then still answers.
CACHE_NAMESPACE = "spacy-ita.llm_knowledge.v1"

DEFAULT_CONFIG = {
    "task": {"@misc": "spacy-ita.mentions_task.v1"},
    "cache_path": None,
    "on_error": "warn",
    "existing_knowledge": "keep",
    "batch_size": 64,
    "max_pixels": DEFAULT_MAX_PIXELS,
    "max_side": DEFAULT_MAX_SIDE,
    "max_bytes": DEFAULT_MAX_BYTES,
}


@dataclass
class _Question:
    """One doc's question: what the image gave, the image to send, the cache
    key of both with the text, and the answer or why there is none."""

    doc: Doc
    found: Dict[str, List[str]]
    key: str
    image: Any = None
    knowledge: Optional[List[str]] = None
    error: Optional[str] = None
    retryable: bool = False


class ItaKnowledge(Pipe):
    """Fills `VisualContext.knowledge` with the entity mentions a language
    model finds in each post, given the post's text and visual context."""

    def __init__(self, name: str, *, task: MentionsTask, model: OpenAICompatible,
                 cache_path: Optional[str], on_error: str, existing_knowledge: str,
                 batch_size: int, max_pixels: int, max_side: Optional[int], max_bytes: int):
        for setting, value, choices in (("on_error", on_error, ON_ERROR_CHOICES),
                                        ("existing_knowledge", existing_knowledge,
                                         EXISTING_KNOWLEDGE_CHOICES)):
            if value not in choices:
                raise ValueError(f"{name}: {setting} must be one of {choices}, got {value!r}")
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.task = task
        self.model = model
        self.cache = ContextCache(cache_path) if cache_path else None
        self.on_error = on_error
        self.existing_knowledge = existing_knowledge
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.max_side = max_side
        self.max_bytes = max_bytes
        settings = {**task.settings(), **model.settings()}
        self.cache_key = (f"{CACHE_NAMESPACE} {json.dumps(settings, sort_keys=True)} "
                          f"max_side={max_side}")

    def preflight(self) -> None:
        """Check what a run needs from its environment before any doc: the cache
        opens and takes writes, the key is set, the endpoint answers and serves
        the model. Raises with the reason."""
        if self.cache is not None:
            self.cache.check()
        self.model.load()

    def __call__(self, doc: Doc) -> Doc:
        self._process([doc])
        return doc

    def pipe(self, stream: Iterable[Doc], batch_size: Optional[int] = None) -> Iterator[Doc]:
        """Process docs in batches of at most `self.batch_size`, yielding them in order."""
        for batch in minibatch(stream, min(batch_size or self.batch_size, self.batch_size)):
            self._process(batch)
            yield from batch

    def _process(self, docs: List[Doc]) -> None:
        """Ask for the docs' knowledge that the cache does not have, all at once
        (the model runs `max_concurrency` calls in parallel), and write it."""
        questions = [self._question(doc) for doc in docs if self._wants(doc)]
        if not questions:
            return
        self.model.load()  # a broken setup fails here, loudly, not as one error per post
        todo = [q for q in questions if q.knowledge is None]
        answers = self.model([self.task.messages(q.doc.text, q.found, q.image) for q in todo])
        for question, answer in zip(todo, answers):
            self._take(question, answer)
        if self.cache is not None:
            self.cache.put_many([(q.key, self.cache_key, {"knowledge": q.knowledge})
                                 for q in todo if q.error is None])
        for question in questions:
            self._write(question)

    def _wants(self, doc: Doc) -> bool:
        """Whether to ask about `doc`: not when it has knowledge that is to be kept."""
        context = get_visual_context(doc)
        return not (self.existing_knowledge == "keep" and context is not None
                    and context.knowledge)

    @staticmethod
    def _found(doc: Doc) -> Dict[str, List[str]]:
        """What the image gave: the doc's visual context without its knowledge."""
        found = (get_visual_context(doc) or VisualContext()).to_dict()
        found.pop("knowledge")
        return found

    def _question(self, doc: Doc) -> _Question:
        """The doc's cache key (a hash of the image it sends, its text and what
        the image gave) with the cached answer, or the image to send. The image
        is decoded only when no answer is cached under its hash."""
        found = self._found(doc)
        source = self._source(doc) if self.task.send_image else None
        if source is not None:
            question = self._cached(doc, found, source.content_hash)
            if question.knowledge is not None:
                return question
            question.image = self._decode(doc, source)
            if question.image is not None:
                return question
        return self._cached(doc, found, None)  # asked as text

    def _cached(self, doc: Doc, found: Dict[str, List[str]],
                image_hash: Optional[str]) -> _Question:
        """The question keyed by the image's hash, the text and what the image
        gave, with the answer the cache holds under that key (if any)."""
        key = json.dumps([image_hash, doc.text, found], sort_keys=True, ensure_ascii=False)
        question = _Question(doc, found, hashlib.sha256(key.encode("utf-8")).hexdigest())
        cached = None if self.cache is None else self.cache.get(question.key, self.cache_key)
        if cached is not None:
            question.knowledge = cached.get("knowledge", [])
        return question

    def _source(self, doc: Doc) -> Optional[ImageSource]:
        """The bytes of `Doc._.image` and their hash (None when there is none
        or it cannot be read: the post is then asked as text)."""
        if doc._.image is None:
            return None
        try:
            return read_image_source(doc._.image, self.max_bytes, self.max_pixels)
        except ImageError as err:
            self._image_failed(doc, err)
            return None

    def _decode(self, doc: Doc, source: ImageSource) -> Any:
        """The decoded image, or None (the post is asked as text) when it cannot be."""
        try:
            return decode_image(source, self.max_pixels, self.max_side)
        except ImageError as err:
            self._image_failed(doc, err)
            return None

    @staticmethod
    def _image_failed(doc: Doc, err: ImageError) -> None:
        if doc._.image_error is None:
            doc._.image_error = str(err)

    def _take(self, question: _Question, answer: Any) -> None:
        """The knowledge in one answer, or the reason (key-free) why there is none.
        Any error reading the answer is this question's, not the batch's: the
        knowledge is checked here, before it is cached or written. An answer
        that repeats the API key (an endpoint or proxy echoing the Authorization
        header) is not used, so that the key never becomes knowledge."""
        question.image = None
        if isinstance(answer, CallFailure):
            question.error, question.retryable = answer.reason, answer.retryable
            return
        try:
            knowledge = self.task.parse(answer.text, answer.finish_reason)
            VisualContext(knowledge=knowledge)  # raises unless a list of texts
            if self.model.echoes_key(answer.text, *knowledge):  # JSON may escape it in the text
                raise AnswerError("the answer repeats the API key (an endpoint or proxy that "
                                  "echoes the Authorization header?); it is not used")
        except AnswerError as err:
            question.error = self.model.scrub(str(err))
        except Exception as err:  # a task's bug, or knowledge that is not text
            question.error = self.model.scrub(f"{type(err).__name__}: {err}")
        else:
            question.knowledge = knowledge

    def _write(self, question: _Question) -> None:
        """Put the answer (merged or in place of the doc's knowledge) and the error on the doc."""
        doc = question.doc
        context = get_visual_context(doc) or VisualContext()
        found = question.knowledge or []
        if self.existing_knowledge == "merge":
            found = context.knowledge + [text for text in found if text not in context.knowledge]
        doc._.visual_context = replace(context, knowledge=found)
        doc._.knowledge_error = (None if question.error is None
                                 else f"{self.model.name} failed: {question.error}")
        doc._.context_retryable = bool(doc._.context_retryable) or question.retryable
        if question.error is not None:
            report_failure(f"{self.name}: no knowledge for", doc, doc._.knowledge_error,
                           self.on_error, RuntimeError)


@Language.factory(
    "ita_knowledge",
    default_config=DEFAULT_CONFIG,
    assigns=["doc._.visual_context", "doc._.knowledge_error", "doc._.context_retryable"],
)
def make_ita_knowledge(
    nlp: Language,
    name: str,
    task: MentionsTask,
    model: OpenAICompatible,
    cache_path: Optional[str],
    on_error: str,
    existing_knowledge: str,
    batch_size: int,
    max_pixels: int,
    max_side: Optional[int],
    max_bytes: int,
) -> ItaKnowledge:
    """Create the `ita_knowledge` component, to place after `ita_context`.
    `task` says what to ask and how to read the answer, `model` whom to ask;
    `cache_path` names an SQLite file that keeps answers across runs (it may be
    ita_context's); `on_error` is "warn", "raise" or "ignore" for failed
    knowledge; `existing_knowledge` says what happens to a doc that already
    has knowledge: "keep" it (no call), "merge" the answer into it, or
    "replace" it. `max_pixels`, `max_side` and `max_bytes` bound the image
    that a task with `send_image` sends, as for ita_context."""
    return ItaKnowledge(name, task=task, model=model, cache_path=cache_path, on_error=on_error,
                        existing_knowledge=existing_knowledge, batch_size=batch_size,
                        max_pixels=max_pixels, max_side=max_side, max_bytes=max_bytes)
