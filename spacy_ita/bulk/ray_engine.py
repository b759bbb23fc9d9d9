"""The Ray Data engine of `apply` (`--engine ray`, extra `spacy-ita[ray]`).

The job: one read task per input file on the driver's node (skipping rows
already written) that cuts a block per batch of `batch_size` posts, so that
every actor gets its share, then `map_batches` over a pool of actors that each
load the pipeline once and annotate one batch a call, and the
annotated rows stream back to the driver, whose writer makes the run
resumable exactly as in-process. With `extract_workers`, image extraction and
tagging are two actor pools with their own resources (OCR on CPU workers, the
tagger on GPU workers). Ray restarts a killed actor and retries its batch, so
a lost worker loses no post; a batch whose actor dies on every try is done
again post by post, and a post that kills its actor alone gets an error row.
On a laptop `ray.init()` starts a local Ray; with RAY_ADDRESS set it joins
that cluster.
"""
import inspect
import logging
from dataclasses import dataclass, replace
from typing import Any, Dict, Iterator, List, Optional, Sequence

from spacy.util import minibatch

from .annotate import Annotator, PipelineSpec
from .fetch import Fetcher
from .inputs import (Columns, DoneRows, InputFile, Post, read_file_posts, read_posts,
                     unfinished_files, worker_died)

logger = logging.getLogger(__name__)
# Tries of a batch whose actor dies (SIGKILL, a crash, out of memory) before
# Ray drops it, and of each of its posts after that.
WORKER_DEATHS = 3


@dataclass
class RaySettings:
    """Actor pools: `workers` taggers (or extractors and taggers in one), each
    with `worker_cpus` CPUs and `worker_gpus` GPUs; `extract_workers` > 0 moves
    image extraction into its own pool of that many actors."""

    workers: int = 1
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    extract_workers: int = 0
    extract_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.extract_workers < 0:
            raise ValueError("workers must be at least 1 and extract_workers at least 0")


def import_ray():
    """Ray, or an error that names the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RuntimeError("--engine ray needs Ray Data: pip install 'spacy-ita[ray]'") from None
    return ray


def run_ray(spec: PipelineSpec, inputs: Sequence[InputFile], columns: Columns, done: DoneRows,
            batch_size: int, fetcher: Fetcher, settings: RaySettings) -> Iterator[List[Post]]:
    """Annotated batches, in the order Ray finishes them."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init()  # joins the cluster at RAY_ADDRESS when set, else starts a local Ray
    try:
        yield from _run(ray, spec, inputs, columns, done, batch_size, fetcher, settings)
    except ray.exceptions.RayError as err:
        raise ray_failure(ray, err) from err
    finally:
        if started:
            ray.shutdown()


def ray_failure(ray, err: Exception) -> RuntimeError:
    """A failed Ray job as one line: the exception that started it in a task
    or actor (Ray's own message carries the remote traceback, hundreds of lines)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
        message = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {message[0] if message else ''}"
    else:  # an actor that died: its traceback ends with the exception
        lines = str(err).strip().splitlines()
        reason = lines[-1].strip() if lines else type(err).__name__
    return RuntimeError(f"the Ray job failed: {reason}")


def _run(ray, spec: PipelineSpec, inputs: Sequence[InputFile], columns: Columns,
         done: DoneRows, batch_size: int, fetcher: Fetcher,
         settings: RaySettings) -> Iterator[List[Post]]:
    """The posts in batches; then, where a batch's actor died on each of its
    WORKER_DEATHS tries and Ray dropped it, its posts one a batch; then a post
    that still kills its worker as an error row, so that one post that crashes
    native code or runs out of memory costs only its own row."""
    yield from _annotate(ray, read_dataset(ray, inputs, columns, done, batch_size), spec,
                         fetcher, settings)
    unfinished = unfinished_files(inputs, done)
    if unfinished:
        logger.warning("A worker died on every try of some batches: their posts again, one "
                       "a batch")
        yield from _annotate(ray, read_dataset(ray, unfinished, columns, done, 1), spec,
                             fetcher, settings)
    for post in read_posts(unfinished_files(unfinished, done), columns, done):
        post.error = worker_died(post)
        yield [post]


def _annotate(ray, dataset, spec: PipelineSpec, fetcher: Fetcher,
              settings: RaySettings) -> Iterator[List[Post]]:
    """The batches of `dataset` through the stages' actor pools; a batch whose
    actor dies WORKER_DEATHS times is dropped, not retried for ever."""
    stages = [("all", settings.workers, settings.worker_cpus, settings.worker_gpus)]
    if settings.extract_workers:
        stages = [("extract", settings.extract_workers, settings.extract_cpus, 0.0),
                  ("tag", settings.workers, settings.worker_cpus, settings.worker_gpus)]
    for stage, workers, cpus, gpus in stages:
        stage_spec = replace(spec, threads=max(1, int(cpus)),
                             settings=replace(spec.settings, gpu_id=0 if gpus else -1))
        # One batch at a time per actor: a batch takes seconds, and one queued
        # behind a busy actor (the first to load, say) starves an idle one.
        # With two, Ray Data runs both at once in the actor's threads: 4.7
        # posts/s against 7.8 for one 1-CPU worker (docs/benchmarks.md).
        pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)
        dataset = dataset.map_batches(
            _Stage, fn_constructor_args=(stage_spec, stage, fetcher), batch_size=1,
            compute=pool, num_cpus=cpus, num_gpus=gpus or None,
            max_task_retries=WORKER_DEATHS - 1)  # a killed actor restarts; its batch is retried
    dataset.context.max_errored_blocks = -1  # a dropped batch's posts are redone afterwards
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for posts in block["posts"]:
            if isinstance(posts, _Failure):
                raise RuntimeError(f"the Ray job failed: {posts.message}")
            yield list(posts)
    if logger.isEnabledFor(logging.DEBUG):  # where the time went, by Ray Data's count
        logger.debug("Ray Data's stats of the apply job:\n%s", dataset.stats())


def read_dataset(ray, inputs: Sequence[InputFile], columns: Columns, done: DoneRows,
                 batch_size: int):
    """The posts still to do, one batch of posts per row and per block: Ray
    Data would else gather a whole file into one block (up to 128 MiB), which
    one actor takes whole while the others idle, and whose rows reach the
    writer only at its end. A block per post instead costs Ray Data so much per
    block that it fed two actors that sleep 0.12 s a post 9 posts/s, not 16.7
    (14.3 with a block per batch of 32)."""
    units = [{"unit": _ReadUnit(item, columns, done.bitmaps.get(item.name), batch_size)}
             for item in inputs]
    dataset = ray.data.from_items(units, override_num_blocks=len(units))
    dataset.context.target_max_block_size = 1  # byte: cut after every row; this job only
    # Reading takes no reserved CPU (actors holding every CPU must not starve
    # it) and runs on the driver's node, where INPUT is.
    return dataset.map_batches(_read_unit, batch_size=1, num_cpus=0,
                               **_on_this_node(ray, dataset.map_batches))


def _on_this_node(ray, map_batches) -> Dict[str, Any]:
    """map_batches arguments that pin its tasks to this node: a label
    selector where this Ray has them (2.5x on), else a node affinity."""
    node = ray.get_runtime_context().get_node_id()
    if "label_selector" in inspect.signature(map_batches).parameters:
        return {"label_selector": {"ray.io/node-id": node}}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


@dataclass
class _ReadUnit:
    """What one read task needs: an input file, the columns to carry, the rows
    already written and the batch size (an object, so Ray carries it as is)."""

    item: InputFile
    columns: Columns
    bitmap: Any
    batch_size: int


def _batches_block(batches: List[List[Post]]) -> Dict[str, Any]:
    """A block whose rows are batches of posts (Ray Data carries Python
    objects in object columns)."""
    import numpy

    column = numpy.empty(len(batches), dtype=object)
    for row, posts in enumerate(batches):
        column[row] = posts  # one by one: numpy would make a 2-D array of a list of lists
    return {"posts": column}


@dataclass
class _Failure:
    """An exception in a read task or an actor, carried to the driver in place
    of a batch: Ray Data drops a block that raises (a dead actor's, after its
    tries), so only deaths may reach it, and the driver stops on this."""

    message: str


def _read_unit(batch: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Read task: the posts of one input file, in batches."""
    for data in batch["unit"]:
        try:
            for posts in minibatch(read_file_posts(data.item, data.columns, data.bitmap),
                                   data.batch_size):
                yield _batches_block([posts])
        except Exception as err:  # the file went away, say: the run stops, as in-process
            yield _batches_block([_Failure(f"{type(err).__name__}: {err}")])


class _Stage:
    """A Ray actor: loads the pipeline for its stage once, then annotates batches."""

    def __init__(self, spec: PipelineSpec, stage: str, fetcher: Optional[Fetcher]):
        self.annotator = Annotator(spec, stage, fetcher)

    def __call__(self, block: Dict[str, Any]) -> Dict[str, Any]:
        return _batches_block([self._annotate(posts) for posts in block["posts"]])

    def _annotate(self, posts: Any) -> Any:
        if isinstance(posts, _Failure):
            return posts
        try:
            return self.annotator(list(posts))
        except Exception as err:  # a bug outside the per-post retry: not a post's fault
            return _Failure(f"{type(err).__name__}: {err}")
