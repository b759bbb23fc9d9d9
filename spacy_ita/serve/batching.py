"""Concurrent requests batched into `nlp.pipe` calls.

A single worker thread runs the pipeline: it takes the requests waiting in a
queue, bounded in requests and in the bytes their images and texts hold (with
those of the batch running), until it holds `max_posts` posts (a request is
never split, so one with more runs whole), waits for more once it holds one (at
most `max_wait` seconds in all, no longer than `max_gap` for the next, and
not at all once it holds as many posts as the recent batches: clients answered
together come back together, and waiting for those that do not come left
the pipeline idle), and tags them as one batch. Under load, requests
queue up while a batch runs and the next batch takes them all, so the server
tags in batches as `nlp.pipe` does in-process. One thread also means that
ita_ner's view can be switched for the text-only view without a lock. A
failure of the worker fails the requests it holds, never the worker.
"""
import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

from spacy.language import Language
from spacy.tokens import Doc

from ..bulk.annotate import context_components, ner_components
from ..bulk.inputs import Post
from ..visual_context import VisualContext, get_visual_context

Result = Dict[str, Any]
RunBatch = Callable[[List[Post], List[bool]], List[Result]]
MAX_WAIT = 60.0  # seconds, for max_wait and max_gap: every client in a batch waits as long
# 8 requests of the most image bytes the default body and download limits let in (32 MiB).
DEFAULT_MAX_QUEUED_BYTES = 256 * 2**20
_STOP = object()  # the worker's signal to finish
logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests, or more bytes, are waiting than the queue holds: the server is overloaded."""


class BatchFailed(RuntimeError):
    """The worker failed on a request's batch (a bug, not a bad post): the request gets a 500."""


@dataclass
class _Job:
    posts: List[Post]
    text_view: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    size: int  # the bytes its posts hold (held_bytes)


class Batcher:
    """Runs `run` over batches of the posts that `submit` hands it, in one worker
    thread. The requests it holds, waiting or running, hold `max_queued_bytes`
    at most (held_bytes), unless one alone holds more: it is taken when no other is held."""

    def __init__(self, run: RunBatch, max_posts: int = 32, max_wait: float = 0.005,
                 queue_size: int = 256, max_gap: float = 0.001,
                 max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES):
        if not (max_posts >= 1 and queue_size >= 1 and 0 <= max_wait <= MAX_WAIT
                and 0 <= max_gap <= MAX_WAIT):  # NaN fails every comparison
            raise ValueError(f"max_posts and queue_size must be at least 1, max_wait and "
                             f"max_gap from 0 to {MAX_WAIT:g} seconds, got {max_posts}, "
                             f"{queue_size}, {max_wait} and {max_gap}")
        self.run = run
        self.max_posts = max_posts
        self.max_wait = max_wait
        self.max_gap = max_gap
        self.max_queued_bytes = max_queued_bytes
        self._bytes_held = 0
        self._bytes_lock = threading.Lock()  # not _lock: stop holds that while the worker ends
        self._recent_posts: Deque[int] = deque([max_posts], maxlen=4)  # posts of the last batches
        self._queue: "queue.Queue[Any]" = queue.Queue(queue_size)
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the worker, unless it runs already."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="spacy-ita-batcher",
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Finish the batch in hand, then end the worker."""
        with self._lock:
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join()
                self._thread = None

    async def submit(self, posts: List[Post], text_view: bool) -> List[Result]:
        """The results of `posts`, in order, once a batch has run them; QueueFull
        when the queue has no room for them."""
        if self._thread is None:  # no lifespan started it: an app mounted inside another
            self.start()
        loop = asyncio.get_running_loop()
        job = _Job(posts, text_view, loop, loop.create_future(), held_bytes(posts))
        self._hold(job.size)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._release([job])
            raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return await job.future

    def _hold(self, size: int) -> None:
        """Count `size` more bytes held; QueueFull, counting none, when they do not fit."""
        with self._bytes_lock:
            held = self._bytes_held
            fits = held == 0 or held + size <= self.max_queued_bytes
            if fits:
                self._bytes_held += size
        if not fits:
            raise QueueFull(f"the requests waiting or running hold {held:,} bytes of images and "
                            f"text, and this one's {size:,} would go over the limit of "
                            f"{self.max_queued_bytes:,} (--max-queued-bytes)")

    def _release(self, jobs: List[_Job]) -> None:
        with self._bytes_lock:
            self._bytes_held -= sum(job.size for job in jobs)

    def _work(self) -> None:
        stopping = False
        while not stopping:
            jobs: List[_Job] = []
            try:
                stopping = self._collect(jobs)
                if jobs:
                    self._run(jobs)
            except Exception as err:  # a bug, not a bad post: the requests in hand get a 500
                logger.exception("the batching worker failed on %d requests", len(jobs))
                for job in jobs:
                    _notify(job, BatchFailed(f"the server failed on this request's batch: "
                                             f"{type(err).__name__}: {err}"))
            self._release(jobs)

    def _collect(self, jobs: List[_Job]) -> bool:
        """Put the next batch's jobs in `jobs` (at least one, unless stopping),
        there for the worker to fail if this raises; whether the stop signal came."""
        first = self._queue.get()
        if first is _STOP:
            return True
        jobs.append(first)
        n_posts = len(first.posts)
        deadline = time.monotonic() + self.max_wait
        while n_posts < self.max_posts:
            # As many posts as the recent batches had: the clients they answered
            # are back, so take what is queued already and wait no longer (the
            # largest of the last few, so that one lone request does not make
            # every batch stop short).
            wait = 0.0 if n_posts >= max(self._recent_posts) else min(
                self.max_gap, deadline - time.monotonic())
            try:
                job = self._queue.get(timeout=max(0.0, wait))
            except queue.Empty:
                break
            if job is _STOP:
                return True
            jobs.append(job)
            n_posts += len(job.posts)
        self._recent_posts.append(n_posts)
        return False

    def _run(self, jobs: List[_Job]) -> None:
        posts = [post for job in jobs for post in job.posts]
        text_view = [job.text_view for job in jobs for _ in job.posts]
        results = self.run(posts, text_view)
        start = 0
        for job in jobs:
            end = start + len(job.posts)
            _notify(job, results[start:end])
            start = end


def held_bytes(posts: List[Post]) -> int:
    """What `posts` hold that their client chose the size of: their image bytes
    (an unfetched URL: its characters), and the characters of their texts and contexts."""
    return sum(len(post.image or "") + len(post.text)
               + sum(sum(map(len, items)) for items in (post.visual_context or {}).values())
               for post in posts)


def _notify(job: _Job, outcome: Any) -> None:
    """Hand `outcome` (results, or an exception to raise) to the request
    waiting for `job`, in its event loop."""
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, outcome)
    except RuntimeError:  # the event loop has closed: nobody waits any more
        pass


def _settle(future: asyncio.Future, outcome: Any) -> None:
    if future.done():  # the client went away and the request was cancelled
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def ita_ner_component(nlp: Language):
    """The pipeline's ita_ner component; ValueError when it has none."""
    names = ner_components(nlp)
    if names:
        return nlp.get_pipe(names[0])
    raise ValueError(f"the pipeline has no ita_ner component (its components: "
                     f"{', '.join(nlp.pipe_names) or 'none'})")


class PostTagger:
    """Tags a batch of posts whose images are fetched: the pipeline's entities,
    the view ita_ner read each post with, the visual context, the errors, and
    on request the entities of the text-only view. A failing batch is run
    again post by post, so that a bad post costs only its own result."""

    def __init__(self, nlp: Language, max_pixels: Optional[int] = None):
        self.nlp = nlp
        self.ner = ita_ner_component(nlp)
        self.context_names = context_components(nlp)
        for name in self.context_names:
            component = nlp.get_pipe(name)
            component.on_error = "ignore"  # errors go into the results
            if max_pixels is not None:
                component.max_pixels = max_pixels
            if nlp.get_pipe_meta(name).factory == "ita_context":
                component.existing_context = "merge"  # the caller's context and the image's

    def __call__(self, posts: List[Post], text_view: List[bool]) -> List[Result]:
        try:
            return self._tag(posts, text_view)
        except Exception as err:
            if len(posts) == 1:
                return [self._failure(posts[0], err, text_view[0])]
        return [result for post, wanted in zip(posts, text_view)
                for result in self([post], [wanted])]

    def _tag(self, posts: List[Post], text_view: List[bool]) -> List[Result]:
        docs = list(self.nlp.pipe([self._doc(post) for post in posts], batch_size=len(posts)))
        text_docs = iter(self._text_view([doc for doc, wanted in zip(docs, text_view) if wanted]))
        return [self._result(post, doc, next(text_docs) if wanted else None)
                for post, doc, wanted in zip(posts, docs, text_view)]

    def _text_view(self, docs: Sequence[Doc]) -> List[Doc]:
        """Copies of `docs` tagged again by ita_ner in the text-only view."""
        if not docs:
            return []
        view = self.ner.view
        try:
            self.ner.view = "text"
            return list(self.ner.pipe([doc.copy() for doc in docs]))
        finally:
            self.ner.view = view

    def _doc(self, post: Post) -> Doc:
        doc = self.nlp.make_doc(post.text)
        if post.visual_context is not None:
            doc._.visual_context = VisualContext.from_dict(post.visual_context)
        doc._.image = post.image
        return doc

    def _result(self, post: Post, doc: Doc, text_doc: Optional[Doc]) -> Result:
        errors = self._errors(post)
        for error in (doc._.image_error, doc._.knowledge_error):
            if error is not None:
                errors.append(f"{post.where}: {error}")
        context = get_visual_context(doc)
        result = {"entities": entity_list(doc), "view": doc._.ita_view,
                  "context": None if context is None else context.to_dict(), "errors": errors}
        if text_doc is not None:
            result["text_view"] = {"entities": entity_list(text_doc)}
        return result

    def _failure(self, post: Post, err: Exception, text_view: bool) -> Result:
        errors = self._errors(post)
        errors.append(f"{post.where}: the pipeline failed on this post: "
                      f"{type(err).__name__}: {err}")
        result = {"entities": [], "view": None, "context": None, "errors": errors}
        if text_view:
            result["text_view"] = {"entities": []}
        return result

    def _errors(self, post: Post) -> List[str]:
        """What went wrong before the pipeline: the image's fetch, or an image
        that no component reads."""
        errors = [post.image_error] if post.image_error is not None else []
        if post.image is not None and not self.context_names:
            errors.append(f"{post.where}: the image was not read: the pipeline has no "
                          "ita_context component (the server runs with --no-context)")
        return errors


def entity_list(doc: Doc) -> List[Dict[str, Any]]:
    return [{"text": ent.text, "label": ent.label_, "start": ent.start_char,
             "end": ent.end_char} for ent in doc.ents]
