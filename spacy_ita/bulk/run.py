"""`apply`: a trained pipeline over a collection of posts, from files to a file.

The same function backs `python -m spacy_ita apply` and notebooks. Its
settings come in groups, each a dataclass whose defaults are the CLI's:

    from spacy_ita.bulk import apply, LocalSettings, RaySettings
    summary = apply("training/model-best", "posts.jsonl", "entities.parquet")
    summary = apply(..., engine=LocalSettings(n_process=2))
    summary = apply(..., engine=RaySettings(workers=4))
"""
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from tqdm import tqdm

from .annotate import PipelineSettings, PipelineSpec
from .fetch import Fetcher
from .inputs import (Columns, DoneRows, InputFile, Post, check_text_column, count_rows,
                     find_inputs, input_root, read_posts, without_output)
from .local import LocalSettings, run_local
from .outputs import InFlight, OutputLock, open_writer
from .ray_engine import RaySettings, run_ray

ENGINES = {"local": LocalSettings, "ray": RaySettings}
EngineSettings = Union[LocalSettings, RaySettings]


@dataclass
class OutputSettings:
    """How OUTPUT is written: `rows_per_part` rows per Parquet part file while
    the run goes; `overwrite` starts afresh instead of resuming; `retry_errors`
    also redoes the rows with any error (rows marked retryable always are)."""

    rows_per_part: int = 20_000
    overwrite: bool = False
    retry_errors: bool = False

    def __post_init__(self) -> None:
        if self.rows_per_part < 1:
            raise ValueError(f"rows_per_part must be at least 1, got {self.rows_per_part}")


@dataclass
class ApplySummary:
    """What a run did: rows written now, rows found already written, earlier
    failures taken out to be redone, failures (`n_retryable`: those the next
    run redoes) and repairs (rows with a `warning`)."""

    n_written: int = 0
    n_skipped: int = 0
    n_redone: int = 0
    n_errors: int = 0
    n_image_errors: int = 0
    n_warnings: int = 0
    n_knowledge_errors: int = 0
    n_retryable: int = 0
    n_failed: int = 0  # rows with an error or marked retryable
    n_entities: int = 0
    seconds: float = 0.0
    seconds_to_first_row: Optional[float] = None  # the start: engine, workers, first batch

    @property
    def posts_per_second(self) -> float:
        return self.n_written / self.seconds if self.seconds else 0.0

    @property
    def all_failed(self) -> bool:
        """Every row written now failed: the setup, not the posts, is wrong."""
        return self.n_written > 0 and self.n_failed == self.n_written


def apply(
    model: str,
    input: Union[str, Path],
    output: Union[str, Path],
    *,
    engine: Union[str, EngineSettings] = "local",
    batch_size: int = 32,
    pipeline: Optional[PipelineSettings] = None,
    columns: Optional[Columns] = None,
    images: Optional[Fetcher] = None,
    writing: Optional[OutputSettings] = None,
    progress: bool = True,
) -> ApplySummary:
    """Run the pipeline `model` over every post of INPUT (JSONL, CSV or Parquet
    files; a folder or glob of them) and write one row per post to OUTPUT
    (.jsonl or .parquet): the carried columns, `entities`, `visual_context`,
    `view`, `image_error`, `warning`, `knowledge_error`, `error` and
    `retryable`. Rows already in OUTPUT are skipped, so a killed run resumes
    where it stopped, but rows marked `retryable` are done again (`writing`:
    `OutputSettings`); an OUTPUT that apply did not write is refused, never
    changed. OUTPUT and its parts are not read as input where INPUT's folder
    or glob holds them (INPUT that is OUTPUT is refused). Before the first
    row the text column (in the input files' first rows), the context's
    cache, LM key and endpoint are checked.

    `engine`: "local", "ray", or their settings (`LocalSettings` for worker
    processes and threads, `RaySettings` for actor pools); each worker takes
    `batch_size` posts at a time. `pipeline` (`PipelineSettings`): the
    ita_context added to a pipeline without one, cache, GPU, precision,
    custom code. `columns` (`Columns`): the text, image and carried columns.
    `images` (`Fetcher`): the image rules; its `image_root` (where local
    images must resolve) defaults to the folder INPUT names, and URLs must
    reach a public address unless `allow_private_urls` (docs/apply.md,
    "Trust model")."""
    engine = _engine_settings(engine)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    start = time.perf_counter()
    inputs = without_output(find_inputs(str(input)), Path(output))
    columns = columns or Columns()
    writing = writing or OutputSettings()
    spec = PipelineSpec(str(model), pipeline or PipelineSettings())
    images = images or Fetcher()
    fetcher = replace(images, image_root=_image_root(input, images.image_root))
    # Held from before the preflight, so that a second run on OUTPUT is refused at once.
    with OutputLock(Path(output)) as lock:
        # Before OUTPUT is touched: a wrong setup writes nothing.
        check_text_column(inputs, columns)
        spec.preflight()
        writer = open_writer(Path(output), writing.overwrite, writing.rows_per_part)
        if writing.overwrite:
            lock.crashed = InFlight()  # what a run died on was in the OUTPUT now replaced
        n_redone = writer.drop_redone(writing.retry_errors)
        done = writer.done_rows()
        summary = ApplySummary(n_skipped=done.count, n_redone=n_redone)
        batches = _annotated_batches(engine, spec, inputs, columns, done, batch_size, fetcher,
                                     lock)
        total = sum(count_rows(item) for item in inputs) - done.count if progress else None
        try:
            _write_all(batches, writer, done, summary, start,
                       tqdm(total=total, unit="post", disable=not progress))
        except BaseException:
            writer.stop()
            raise
        writer.finish()
    summary.seconds = time.perf_counter() - start
    return summary


def engine_kind(name: str) -> type:
    """The settings class of the engine called `name` ("local" or "ray")."""
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {tuple(ENGINES)} (or a LocalSettings or "
                         f"RaySettings), got {name!r}")
    return ENGINES[name]


def _engine_settings(engine: Union[str, EngineSettings]) -> EngineSettings:
    """The settings `engine` names: a name stands for that engine's defaults."""
    if isinstance(engine, (LocalSettings, RaySettings)):
        return engine
    return engine_kind(engine)()


def _annotated_batches(engine: EngineSettings, spec: PipelineSpec, inputs: Sequence[InputFile],
                       columns: Columns, done: DoneRows, batch_size: int, fetcher: Fetcher,
                       lock: OutputLock) -> Iterator[List[Post]]:
    """The batches of posts not yet done, annotated by the engine."""
    if isinstance(engine, RaySettings):
        return run_ray(spec, inputs, columns, done, batch_size, fetcher, engine)
    return run_local(spec, read_posts(inputs, columns, done), batch_size, engine, fetcher, lock)


def _image_root(input: Union[str, Path], image_root: Optional[Union[str, Path]]) -> str:
    """The folder local images must resolve inside: `image_root`, or the folder INPUT names."""
    root = input_root(str(input)) if image_root is None else Path(image_root)
    if not root.is_dir():
        raise ValueError(f"image_root {str(root)!r} is not a folder")
    return str(root)


def _write_all(batches: Iterator[List[Post]], writer, done: DoneRows, summary: ApplySummary,
               start: float, bar) -> None:
    """Write each post once: a post already written (a retried batch that
    came back twice) is dropped."""
    with bar:
        for batch in batches:
            if summary.seconds_to_first_row is None:
                summary.seconds_to_first_row = time.perf_counter() - start
            posts = [post for post in batch if done.add(post.file, post.row)]
            for row in writer.write([post.output_row() for post in posts]):
                summary.n_written += 1
                summary.n_errors += row["error"] is not None
                summary.n_image_errors += row["image_error"] is not None
                summary.n_warnings += row["warning"] is not None
                summary.n_knowledge_errors += row.get("knowledge_error") is not None
                summary.n_retryable += bool(row.get("retryable"))
                summary.n_failed += row["error"] is not None or bool(row.get("retryable"))
                summary.n_entities += len(row["entities"])
            bar.update(len(batch))
