"""What every `apply` worker does to a batch of posts, in-process, in a
`--n-process` worker or in a Ray actor: fetch image URLs, run the pipeline,
fill in entities, visual context and view.

A pipeline loads once per worker from a picklable `PipelineSpec`. The work can
be split in two stages, "extract" (image -> visual context) and "tag"
(text + context -> entities), so that Ray can give each its own workers.

A post that fails for a reason of the environment, not of the post (an
unreachable LM, a timeout, an unusable cache or disk), is marked `retryable`:
the next run does it again.
"""
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from typing import List, Optional

from spacy.language import Language
from spacy.tokens import Doc

from ..context.cache import CacheError
from ..context.config import OCREngine, context_config
from ..context.registry import SetupError
from ..ner.precision import check_precision
from ..visual_context import get_visual_context
from .fetch import Fetcher
from .inputs import Post

STAGES = ("all", "extract", "tag")
# The components of the extract stage: image -> visual context, then LM knowledge.
CONTEXT_FACTORIES = ("ita_context", "ita_knowledge")
# Exceptions of the environment: the post may well go through in a later run.
ENVIRONMENT_ERRORS = (OSError, CacheError, SetupError)


@dataclass
class PipelineSettings:
    """How `apply` loads the pipeline in each worker: the `ita_context` added
    to a pipeline that has none (OCR engine `ocr`, EfficientNet `tags`; none
    if not `add_context`), a context `cache` file, the GPU, ita_ner's
    `precision` (None keeps the pipeline's own) and a Python file of custom
    components (`code`) that each worker imports first."""

    add_context: bool = True
    ocr: str = "rapidocr"
    tags: bool = True
    cache: Optional[str] = None
    gpu_id: int = -1
    precision: Optional[str] = None  # of every ita_ner: "auto", "bf16", "fp32"; None: as saved
    code: Optional[str] = None

    def __post_init__(self) -> None:
        if self.ocr not in {engine.value for engine in OCREngine}:
            raise ValueError(f"ocr must be one of {[engine.value for engine in OCREngine]}, "
                             f"got {self.ocr!r}")
        if self.precision is not None:
            check_precision(self.precision)
        # Paths travel to the workers as strings (a Path pickles fine, but
        # configs and logs want text).
        self.cache = None if self.cache is None else str(self.cache)
        self.code = None if self.code is None else str(self.code)


@dataclass
class PipelineSpec:
    """What a worker needs to build its pipeline: the model, the settings, and
    the threads the worker may use (None: leave torch's and OCR's as they are)."""

    model: str
    settings: PipelineSettings = field(default_factory=PipelineSettings)
    threads: Optional[int] = None

    def load(self, stage: str = "all") -> Language:
        """The pipeline for one stage: "all", "extract" (only the context
        component) or "tag" (everything but it)."""
        import spacy

        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        settings = self.settings
        if settings.code:
            spacy.util.import_file("spacy_ita_apply_code", settings.code)
        if self.threads:
            hold_threads(self.threads)
        if settings.gpu_id >= 0:
            spacy.require_gpu(settings.gpu_id)
        nlp = spacy.load(self.model, exclude=self._excluded(stage))
        contexts = context_components(nlp)
        if not contexts and stage != "tag" and settings.add_context:
            config = context_config(settings.ocr, settings.tags)
            before = tagging_components(nlp)
            nlp.add_pipe("ita_context", config=config,
                         **({"before": before[0]} if before else {"first": True}))
            contexts = context_components(nlp)
        if settings.precision is not None:
            for name in ner_components(nlp):
                nlp.get_pipe(name).precision = settings.precision
        for name in contexts:
            component = nlp.get_pipe(name)
            component.on_error = "ignore"  # errors go into the output rows
            if settings.cache:
                from ..context.cache import ContextCache

                component.cache = ContextCache(settings.cache)
        return nlp

    def preflight(self) -> None:
        """Check what the run needs from its environment before the first post,
        in this process: each context component's cache opens and takes
        writes, its LM key is set and its endpoint answers. Loads only the
        context components (no model weights), on the CPU."""
        preflight_components(replace(self, settings=replace(self.settings, gpu_id=-1),
                                     threads=None).load("extract"))

    def _excluded(self, stage: str) -> List[str]:
        """The components a stage does without, read from the model's config so
        that the extract stage never loads the tagger's weights."""
        if stage == "all":
            return []
        import spacy

        components = spacy.util.load_config(_config_path(self.model)).get("components", {})
        return [name for name, block in components.items()
                if (block.get("factory") in CONTEXT_FACTORIES) == (stage == "tag")]


def hold_threads(threads: int) -> None:
    """Hold this process's compute to `threads` threads: torch's (the tagger,
    EfficientNet), OpenCV's (RapidOCR's image work), the tokenizers' pool (if
    not started yet and not set by the user) and, through
    `context.ocr.default_thread_count`, which reads torch's, the intra-op
    threads of the onnxruntime sessions RapidOCR builds afterwards. A worker
    of one CPU that ran each library's default (a thread per core) would
    compete with the other workers for their cores."""
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))  # Hugging Face tokenizers' pool
    if _opencv_came_through_fork:
        # OpenCV's thread pool is not fork-safe: resizing one whose threads
        # stayed in the parent deadlocks. The process keeps the parent's count.
        return
    try:
        import cv2
    except ImportError:  # no OpenCV: no RapidOCR either
        return
    cv2.setNumThreads(threads)


_opencv_came_through_fork = False


def _note_a_fork() -> None:
    """In a forked child: was OpenCV (and maybe its thread pool) the parent's?"""
    global _opencv_came_through_fork
    _opencv_came_through_fork = "cv2" in sys.modules


os.register_at_fork(after_in_child=_note_a_fork)


def _config_path(model: str):
    from pathlib import Path

    import spacy

    path = Path(model)
    if not path.exists():  # an installed package
        path = spacy.util.get_package_path(model)
        path = next(p for p in path.iterdir() if (p / "config.cfg").exists())
    return path / "config.cfg"


def preflight_components(nlp: Language) -> None:
    """Run each context component's preflight: its cache opens and takes
    writes, its LM key is set and its endpoint answers; raises with the reason."""
    for name in context_components(nlp):
        nlp.get_pipe(name).preflight()


def context_components(nlp: Language) -> List[str]:
    return [name for name in nlp.pipe_names
            if nlp.get_pipe_meta(name).factory in CONTEXT_FACTORIES]


def ner_components(nlp: Language) -> List[str]:
    return [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory == "ita_ner"]


def tagging_components(nlp: Language) -> List[str]:
    return [name for name in nlp.pipe_names
            if nlp.get_pipe_meta(name).factory not in CONTEXT_FACTORIES]


class Annotator:
    """Runs one stage of the pipeline over batches of posts; a failing batch
    is retried post by post, so one bad post costs only its own row."""

    def __init__(self, spec: PipelineSpec, stage: str = "all", fetcher: Optional[Fetcher] = None):
        self.stage = stage
        self.nlp = spec.load(stage)
        self.fetcher = fetcher or Fetcher()

    def __call__(self, posts: List[Post]) -> List[Post]:
        if self.stage != "tag":
            self.fetcher.fetch_posts(posts)
        todo = [post for post in posts if post.error is None]
        try:
            self._run(todo)
        except Exception:
            for post in todo:
                try:
                    self._run([post])
                except Exception as err:
                    post.retryable = isinstance(err, ENVIRONMENT_ERRORS)
                    post.error = (f"{post.where}: the pipeline failed on this post: "
                                  f"{type(err).__name__}: {err}")
        return posts

    def _run(self, posts: List[Post]) -> None:
        docs = [self._doc(post) for post in posts]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # per-post errors go into rows
            docs = list(self.nlp.pipe(docs))
        for post, doc in zip(posts, docs):
            self._record(post, doc, doc._.ita_view)

    def _doc(self, post: Post) -> Doc:
        doc = self.nlp.make_doc(post.text)
        if self.stage == "tag":
            doc._.visual_context = post.visual_context
        else:
            doc._.image = post.image
        return doc

    def _record(self, post: Post, doc: Doc, view: Optional[str]) -> None:
        """Copy what the pipeline found into the post; `view` is what ita_ner
        read ("cross" or "text"; None without ita_ner)."""
        if self.stage != "tag":
            context = get_visual_context(doc)
            post.visual_context = None if context is None else context.to_dict()
            if doc._.image_error is not None:
                post.image_error = f"{post.where}: {doc._.image_error}"
            if doc._.knowledge_error is not None:
                post.knowledge_error = f"{post.where}: {doc._.knowledge_error}"
            post.retryable = post.retryable or bool(doc._.context_retryable)  # or its fetch
            post.image = None  # the bytes of a fetched image are not needed any more
        if self.stage != "extract":
            post.entities = [{"text": ent.text, "label": ent.label_, "start_char": ent.start_char,
                              "end_char": ent.end_char} for ent in doc.ents]
            post.view = view
