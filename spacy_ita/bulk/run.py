"""`apply`: a trained pipeline over a collection of posts, from files to a file.

The same function backs `python -m spacy_ita apply` and notebooks:

    from spacy_ita.bulk import apply
    summary = apply("training/model-best", "posts.jsonl", "entities.parquet", n_process=2)
"""
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from tqdm import tqdm

from ..context.images import DEFAULT_MAX_BYTES
from ..ner.precision import check_precision
from .annotate import PipelineSpec
from .fetch import Fetcher
from .inputs import Columns, DoneRows, Post, count_rows, find_inputs, input_root, read_posts
from .outputs import OutputLock, open_writer

ENGINES = ("local", "ray")


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
    text_column: str = "text",
    image_column: Optional[str] = "image",
    keep: Optional[Sequence[str]] = None,
    engine: str = "local",
    batch_size: int = 32,
    n_process: int = 1,
    ocr: str = "rapidocr",
    tags: bool = True,
    add_context: bool = True,
    cache: Optional[Union[str, Path]] = None,
    gpu_id: int = -1,
    precision: Optional[str] = None,
    code: Optional[Union[str, Path]] = None,
    workers: int = 1,
    worker_cpus: float = 1.0,
    worker_gpus: float = 0.0,
    extract_workers: int = 0,
    extract_cpus: float = 1.0,
    max_image_bytes: int = DEFAULT_MAX_BYTES,
    fetch_timeout: float = 20.0,
    image_root: Optional[Union[str, Path]] = None,
    allow_private_urls: bool = False,
    rows_per_part: int = 20_000,
    overwrite: bool = False,
    retry_errors: bool = False,
    progress: bool = True,
) -> ApplySummary:
    """Run the pipeline `model` over every post of INPUT (JSONL, CSV or Parquet
    files; a folder or glob of them) and write one row per post to OUTPUT
    (.jsonl or .parquet): the carried columns, `entities`, `visual_context`,
    `view`, `image_error`, `warning`, `knowledge_error`, `error` and
    `retryable`. Rows already in OUTPUT are skipped, so a killed run resumes
    where it stopped, but rows marked `retryable` (and with `retry_errors`
    every row with an error) are done again; an OUTPUT that apply did not
    write is refused, never changed. Before the first row the context's cache,
    LM key and endpoint are checked. A pipeline without `ita_context` gets
    one (OCR engine `ocr`, EfficientNet `tags`) unless `add_context` is False.
    A row's image file must resolve inside `image_root` (default: the folder
    INPUT names) and its image URL must reach a public address unless
    `allow_private_urls` (docs/apply.md, "Trust model"). `precision` sets
    every ita_ner's (`"auto"`, `"bf16"`, `"fp32"`; None keeps the pipeline's).
    `engine="ray"` runs the work as a Ray Data job (see `ray_engine.RaySettings`
    for `workers` and the rest)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if batch_size < 1 or n_process < 1:
        raise ValueError("batch_size and n_process must be at least 1")
    start = time.perf_counter()
    inputs = find_inputs(str(input))
    columns = Columns(text_column, image_column, keep)
    context = {"ocr": ocr, "tags": tags} if add_context else None
    spec = PipelineSpec(str(model), context=context, cache=None if cache is None else str(cache),
                        gpu_id=gpu_id, code=None if code is None else str(code),
                        precision=None if precision is None else check_precision(precision))
    fetcher = Fetcher(max_bytes=max_image_bytes, timeout=fetch_timeout,
                      image_root=_image_root(input, image_root),
                      allow_private_urls=allow_private_urls)
    # Held from before the preflight, so that a second run on OUTPUT is refused at once.
    with OutputLock(Path(output)):
        spec.preflight()  # before OUTPUT is touched: a wrong setup writes nothing
        writer = open_writer(Path(output), overwrite, rows_per_part)
        n_redone = writer.drop_redone(retry_errors)
        done = writer.done_rows()
        summary = ApplySummary(n_skipped=done.count, n_redone=n_redone)
        if engine == "ray":
            from .ray_engine import RaySettings, run_ray

            settings = RaySettings(workers, worker_cpus, worker_gpus, extract_workers,
                                   extract_cpus)
            batches = run_ray(spec, inputs, columns, done, batch_size, fetcher, settings)
        else:
            from .local import run_local

            batches = run_local(spec, read_posts(inputs, columns, done), batch_size, n_process,
                                fetcher)
        total = sum(count_rows(item) for item in inputs) - done.count if progress else None
        try:
            _write_all(batches, writer, done, summary,
                       tqdm(total=total, unit="post", disable=not progress))
        except BaseException:
            writer.stop()
            raise
        writer.finish()
    summary.seconds = time.perf_counter() - start
    return summary


def _image_root(input: Union[str, Path], image_root: Optional[Union[str, Path]]) -> str:
    """The folder local images must resolve inside: `image_root`, or the folder INPUT names."""
    root = input_root(str(input)) if image_root is None else Path(image_root)
    if not root.is_dir():
        raise ValueError(f"image_root {str(root)!r} is not a folder")
    return str(root)


def _write_all(batches: Iterator[List[Post]], writer, done: DoneRows, summary: ApplySummary,
               bar) -> None:
    """Write each post once: a post already written (a retried batch that
    came back twice) is dropped."""
    with bar:
        for batch in batches:
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
