"""`python -m spacy_ita apply MODEL INPUT OUTPUT`: entities for a whole collection of posts."""
from pathlib import Path
from typing import Optional

import typer

from ..bulk import (ApplySummary, Columns, Fetcher, LocalSettings, OutputSettings, RaySettings,
                    apply)
from ..bulk.run import ENGINES, engine_kind
from ..context.config import OCREngine
from .options import PIPELINE_OPTIONS, pipeline_settings, signals_end_the_run_cleanly
from ..context.images import DEFAULT_MAX_BYTES
from . import app

# The options of `apply` by the settings they fill, kept out of its signature
# so that it stays readable; the keys are the parameter names.
OPTIONS = {
    **PIPELINE_OPTIONS,
    "text_column": typer.Option("text", "--text-column", help="Column with the post's text."),
    "image_column": typer.Option(
        "image", "--image-column",
        help="Column with the image: a path (relative to the input file), file:// or "
        "http(s):// URL, or bytes; '' for none."),
    "keep": typer.Option(
        None, "--keep", metavar="COLS",
        help="Comma-separated columns to carry into the output (default: all but binary ones)."),
    "engine": typer.Option("local", "--engine", help=f"One of {', '.join(ENGINES)}."),
    "batch_size": typer.Option(32, "--batch-size", "-b", min=1, metavar="N",
                               help="Posts per batch."),
    "n_process": typer.Option(1, "--n-process", "-n", min=1, metavar="N",
                              help="Worker processes (local engine); each loads the pipeline."),
    "threads": typer.Option(
        None, "--threads", min=1, metavar="N",
        help="Local engine: threads per process for torch, OpenCV and onnxruntime (default: "
        "a thread per core in one process, the CPUs shared out among several)."),
    "workers": typer.Option(1, "--workers", min=1, metavar="N", help="Ray: tagging actors."),
    "worker_cpus": typer.Option(1.0, "--worker-cpus", help="Ray: CPUs per tagging actor."),
    "worker_gpus": typer.Option(0.0, "--worker-gpus", help="Ray: GPUs per tagging actor."),
    "extract_workers": typer.Option(
        0, "--extract-workers", min=0, metavar="N",
        help="Ray: image-extraction actors in their own stage (0: extract in the taggers)."),
    "extract_cpus": typer.Option(1.0, "--extract-cpus", help="Ray: CPUs per extraction actor."),
    "max_image_bytes": typer.Option(DEFAULT_MAX_BYTES, "--max-image-bytes",
                                    help="Larger images (files or downloads) are refused."),
    "fetch_timeout": typer.Option(20.0, "--fetch-timeout",
                                  help="Seconds to download one image URL."),
    "image_root": typer.Option(
        None, "--image-root", metavar="DIR", file_okay=False,
        help="Image paths and file:// URLs must resolve (symlinks followed) inside DIR "
        "(default: the folder INPUT names)."),
    "rows_per_part": typer.Option(20_000, "--rows-per-part", min=1, metavar="N",
                                  help="Parquet: rows per part file while running."),
    "overwrite": typer.Option(False, "--overwrite",
                              help="Start afresh instead of resuming OUTPUT."),
    "retry_errors": typer.Option(
        False, "--retry-errors",
        help="Also redo the rows of OUTPUT with any error (rows marked retryable are "
        "always redone)."),
}


@app.command("apply")
def apply_cli(
    model: str = typer.Argument(..., help="Trained pipeline: a directory or an installed package."),
    input_path: str = typer.Argument(
        ..., metavar="INPUT",
        help="JSONL, CSV or Parquet file of posts, or a folder or glob of them."),
    output: Path = typer.Argument(..., metavar="OUTPUT",
                                  help="Output file, .jsonl or .parquet."),
    text_column: str = OPTIONS["text_column"],
    image_column: str = OPTIONS["image_column"],
    keep: Optional[str] = OPTIONS["keep"],
    engine: str = OPTIONS["engine"],
    batch_size: int = OPTIONS["batch_size"],
    n_process: int = OPTIONS["n_process"],
    threads: Optional[int] = OPTIONS["threads"],
    ocr: OCREngine = OPTIONS["ocr"],
    tags: bool = OPTIONS["tags"],
    add_context: bool = OPTIONS["add_context"],
    cache: Optional[Path] = OPTIONS["cache"],
    gpu_id: int = OPTIONS["gpu_id"],
    precision: Optional[str] = OPTIONS["precision"],
    code: Optional[Path] = OPTIONS["code"],
    workers: int = OPTIONS["workers"],
    worker_cpus: float = OPTIONS["worker_cpus"],
    worker_gpus: float = OPTIONS["worker_gpus"],
    extract_workers: int = OPTIONS["extract_workers"],
    extract_cpus: float = OPTIONS["extract_cpus"],
    max_image_bytes: int = OPTIONS["max_image_bytes"],
    fetch_timeout: float = OPTIONS["fetch_timeout"],
    image_root: Optional[Path] = OPTIONS["image_root"],
    allow_private_urls: bool = OPTIONS["allow_private_urls"],
    rows_per_part: int = OPTIONS["rows_per_part"],
    overwrite: bool = OPTIONS["overwrite"],
    retry_errors: bool = OPTIONS["retry_errors"],
) -> None:
    """Annotate every post of INPUT with the pipeline MODEL and write one row per
    post to OUTPUT: the carried columns, entities (text, label, start_char,
    end_char), the visual context, the view, and any image, knowledge or row
    error. Rerun after a crash: rows already in OUTPUT are skipped, except
    those marked retryable (the LM or the cache failed), which are redone."""
    try:
        if engine_kind(engine) is RaySettings:
            engine_settings = RaySettings(workers, worker_cpus, worker_gpus, extract_workers,
                                          extract_cpus)
        else:
            engine_settings = LocalSettings(n_process, threads)
        with signals_end_the_run_cleanly():
            summary = apply(
                model, input_path, output, engine=engine_settings, batch_size=batch_size,
                pipeline=pipeline_settings(add_context, ocr, tags, cache, gpu_id, precision,
                                           code),
                columns=Columns(text_column, image_column or None,
                                [name.strip() for name in keep.split(",") if name.strip()]
                                if keep else None),
                images=Fetcher(max_bytes=max_image_bytes, timeout=fetch_timeout,
                               image_root=image_root, allow_private_urls=allow_private_urls),
                writing=OutputSettings(rows_per_part, overwrite, retry_errors))
    except (ValueError, OSError, RuntimeError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1) from None
    _report(summary, output)


def _report(summary: ApplySummary, output: Path) -> None:
    """What the run did, and an error exit when every row failed."""
    redone = f" ({summary.n_redone} of them redone)" if summary.n_redone else ""
    typer.echo(f"Wrote {summary.n_written} posts{redone} to {output} in {summary.seconds:.1f}s "
               f"({summary.posts_per_second:.1f} posts/s); {summary.n_skipped} were already "
               f"there; {summary.n_entities} entities; {summary.n_errors} row errors, "
               f"{summary.n_image_errors} image errors, {summary.n_knowledge_errors} "
               f"knowledge errors, {summary.n_warnings} warnings")
    if summary.n_retryable:
        typer.echo(f"{summary.n_retryable} rows failed for a reason that may pass (the LM "
                   "endpoint, a timeout, the cache) and are marked retryable: rerun the same "
                   "command to redo just those (add --retry-errors to redo every row with "
                   "an error).")
    if summary.all_failed:
        typer.echo("Error: every row failed; see the error columns of OUTPUT. A rerun redoes "
                   "only the rows marked retryable: once the cause is fixed, add --retry-errors "
                   "to redo every row with an error.", err=True)
        raise typer.Exit(code=1)
