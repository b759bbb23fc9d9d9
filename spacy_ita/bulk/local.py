"""The in-process engine of `apply`: batches of posts through one pipeline,
or through `n_process` worker processes that each load it once.

Results come back in input order. At most two batches per worker are in
flight, so memory stays flat however long the input is.

A post that kills the process tagging it (a crash in native code, out of
memory) costs only its own row: with worker processes the batch is done
again post by post in a process of its own (`_WorkerPool`); with one
process the run dies, and the rerun, reading the batch it died on from
OUTPUT's lock file, does the same (`_tag_in_process`).
"""
import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Iterable, Iterator, List, Optional, Union

from spacy.util import minibatch

from .annotate import Annotator, PipelineSpec
from .fetch import Fetcher
from .inputs import Post, process_died, worker_died
from .outputs import InFlight, OutputLock

_WORKER: Union[Annotator, Exception, None] = None
# Signals that end a run (a scheduler, `timeout`, a closed terminal); the apply
# CLI ends through its clean-up on them.
STOPPING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class LocalSettings:
    """The in-process engine: `n_process` worker processes (1: this process),
    each with `threads` threads for torch, OpenCV and onnxruntime (None: the
    libraries' own default, a thread per core, in one process; the usable
    CPUs shared out among several)."""

    n_process: int = 1
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.n_process < 1 or (self.threads is not None and self.threads < 1):
            raise ValueError(f"n_process and threads must be at least 1, got {self.n_process} "
                             f"and {self.threads}")

    def threads_per_process(self) -> Optional[int]:
        """The threads each process is held to (None: left as they are)."""
        if self.threads is None and self.n_process > 1:
            return max(1, _usable_cpus() // self.n_process)
        return self.threads


def run_local(spec: PipelineSpec, posts: Iterable[Post], batch_size: int,
              settings: LocalSettings, fetcher: Fetcher,
              lock: Optional[OutputLock] = None) -> Iterator[List[Post]]:
    """Annotated batches of `posts`, in order; with one process, each batch
    is noted in OUTPUT's `lock` while it is tagged."""
    batches = minibatch(posts, batch_size)
    n_process = settings.n_process
    spec = replace(spec, threads=settings.threads_per_process())
    if n_process == 1:
        yield from _tag_in_process(Annotator(spec, "all", fetcher), batches, lock)
        return
    # The platform's default start method, as spaCy's own n_process: fork on
    # Linux (quick: nothing to re-import; this process has loaded no model).
    context = multiprocessing.get_context()
    # The tokenizers library warns in every forked child unless told before the fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with _WorkerPool(n_process, context, spec, fetcher) as pool:
        window = deque()
        for batch in batches:
            window.append(pool.submit(batch))
            if len(window) >= 2 * n_process:
                yield pool.result(window.popleft())
        while window:
            yield pool.result(window.popleft())


def _tag_in_process(annotator: Annotator, batches: Iterable[List[Post]],
                    lock: Optional[OutputLock]) -> Iterator[List[Post]]:
    """The batches tagged in this process, each noted in the lock file while
    it is tagged. A batch that holds posts of the one an earlier run died on
    is tagged post by post, each noted as alone; a post that a run died on
    alone gets an error row, and stays in every later note until the run
    ends, so that a rerun never tags it again: each rerun gets further."""
    crashed = lock.crashed if lock is not None else InFlight()
    record = lock.record if lock is not None else lambda in_flight: None
    killed = crashed.killed | ({crashed.alone} if crashed.alone else set())
    suspects = crashed.batch - killed
    for batch in batches:
        keys = [(post.file, post.row) for post in batch]
        if not any(key in killed or key in suspects for key in keys):
            record(InFlight(frozenset(keys), None, killed))
            yield annotator(batch)
            continue
        for post, key in zip(batch, keys):
            if key in killed:
                post.error = process_died(post)
                yield [post]
            else:
                record(InFlight(suspects, key, killed))
                yield annotator([post])


@dataclass
class _Job:
    posts: List[Post]
    future: Future
    pool: ProcessPoolExecutor  # the pool it was given to


class _WorkerPool:
    """Worker processes that each load the pipeline once. When one dies (a
    crash in native code, out of memory), every batch in flight is lost with
    the pool: the pool is replaced once, and those batches are done again post
    by post in a process of their own, so that a post whose worker dies there
    is the one that killed it; it gets an error row instead."""

    def __init__(self, n_process: int, context, spec: PipelineSpec, fetcher: Fetcher):
        self.arguments = (context, spec, fetcher)
        self.n_process = n_process
        self.pool = self._start(n_process)
        self.alone: Optional[ProcessPoolExecutor] = None  # started at the first death

    def _start(self, n_process: int) -> ProcessPoolExecutor:
        context, spec, fetcher = self.arguments
        return ProcessPoolExecutor(n_process, mp_context=context, initializer=_start_worker,
                                   initargs=(spec, fetcher))

    def __enter__(self) -> "_WorkerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        for pool in (self.pool, self.alone):
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def submit(self, posts: List[Post]) -> _Job:
        pool = self.pool
        try:
            future = pool.submit(_annotate, posts)
        except BrokenProcessPool as err:  # broken since the last result was read
            future = Future()
            future.set_exception(err)
        return _Job(posts, future, pool)

    def result(self, job: _Job) -> List[Post]:
        """The annotated posts of `job`, or the posts one by one if its pool broke."""
        try:
            return job.future.result()
        except BrokenProcessPool:
            if job.pool is self.pool:  # not yet replaced for another job it held
                job.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._start(self.n_process)
        return [self._tag_alone(post) for post in job.posts]

    def _tag_alone(self, post: Post) -> Post:
        if self.alone is None:
            self.alone = self._start(1)
        try:
            return self.alone.submit(_annotate, [post]).result()[0]
        except BrokenProcessPool:
            self.alone.shutdown(wait=False)
            self.alone = None
            post.error = worker_died(post)
            return post


def _usable_cpus() -> int:
    """The CPUs this process may run on (a container's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _start_worker(spec: PipelineSpec, fetcher: Fetcher) -> None:
    """Load the pipeline; a failure is kept and raised by the first batch, so
    that a pipeline that cannot load stops the run (a failing initializer
    would break the pool, which reads as a post that killed its worker). A
    worker forked from the apply CLI drops its handler of SIGTERM and SIGHUP:
    a worker stopped by one (an out-of-memory guard picks the largest
    process) dies as any, and the run goes on without it."""
    global _WORKER
    for number in STOPPING_SIGNALS:
        signal.signal(number, signal.SIG_DFL)
    try:
        _WORKER = Annotator(spec, "all", fetcher)
    except Exception as err:
        _WORKER = err


def _annotate(posts: List[Post]) -> List[Post]:
    if isinstance(_WORKER, Exception):
        raise _WORKER
    return _WORKER(posts)
