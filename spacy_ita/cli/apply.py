"""`python -m spacy_ita apply MODEL INPUT OUTPUT`: entities for a whole collection of posts."""
from pathlib import Path
from typing import Optional

import typer

from ..bulk.run import ENGINES, apply
from ..context.images import DEFAULT_MAX_BYTES
from . import app
from .extract import OCREngine


@app.command("apply")
def apply_cli(
    model: str = typer.Argument(..., help="Trained pipeline: a directory or an installed package."),
    input_path: str = typer.Argument(
        ..., metavar="INPUT",
        help="JSONL, CSV or Parquet file of posts, or a folder or glob of them."),
    output: Path = typer.Argument(..., metavar="OUTPUT",
                                  help="Output file, .jsonl or .parquet."),
    text_column: str = typer.Option("text", "--text-column", help="Column with the post's text."),
    image_column: str = typer.Option(
        "image", "--image-column",
        help="Column with the image: a path (relative to the input file), file:// or "
        "http(s):// URL, or bytes; '' for none."),
    keep: Optional[str] = typer.Option(
        None, "--keep", metavar="COLS",
        help="Comma-separated columns to carry into the output (default: all but binary ones)."),
    engine: str = typer.Option("local", "--engine", help=f"One of {', '.join(ENGINES)}."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, metavar="N", help="Posts per batch."),
    n_process: int = typer.Option(1, "--n-process", "-n", min=1, metavar="N",
                                  help="Worker processes (local engine); each loads the pipeline."),
    ocr: OCREngine = typer.Option(OCREngine.rapidocr, "--ocr", metavar="ENGINE",
                                  help="OCR engine of the ita_context added to a pipeline "
                                  "that has none: rapidocr, easyocr, tesseract or none."),
    tags: bool = typer.Option(True, "--tags/--no-tags",
                              help="EfficientNet object tags in that ita_context."),
    add_context: bool = typer.Option(
        True, "--context/--no-context",
        help="Add ita_context to a pipeline without one (images -> visual context)."),
    cache: Optional[Path] = typer.Option(None, "--cache", metavar="FILE",
                                         help="SQLite cache of visual contexts, shared across runs."),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help="GPU for the tagger; -1 for CPU."),
    precision: Optional[str] = typer.Option(
        None, "--precision", metavar="MODE",
        help="ita_ner's encoder: auto (bf16 where native), bf16 or fp32 (default: the "
        "pipeline's own)."),
    code: Optional[Path] = typer.Option(None, "--code", exists=True, dir_okay=False,
                                        help="Python file with custom components to import."),
    workers: int = typer.Option(1, "--workers", min=1, metavar="N", help="Ray: tagging actors."),
    worker_cpus: float = typer.Option(1.0, "--worker-cpus", help="Ray: CPUs per tagging actor."),
    worker_gpus: float = typer.Option(0.0, "--worker-gpus", help="Ray: GPUs per tagging actor."),
    extract_workers: int = typer.Option(
        0, "--extract-workers", min=0, metavar="N",
        help="Ray: image-extraction actors in their own stage (0: extract in the taggers)."),
    extract_cpus: float = typer.Option(1.0, "--extract-cpus",
                                       help="Ray: CPUs per extraction actor."),
    max_image_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-image-bytes",
                                        help="Larger images (files or downloads) are refused."),
    fetch_timeout: float = typer.Option(20.0, "--fetch-timeout",
                                        help="Seconds to download one image URL."),
    image_root: Optional[Path] = typer.Option(
        None, "--image-root", metavar="DIR", file_okay=False,
        help="Image paths and file:// URLs must resolve (symlinks followed) inside DIR "
        "(default: the folder INPUT names)."),
    allow_private_urls: bool = typer.Option(
        False, "--allow-private-urls",
        help="Also fetch image URLs on loopback, private, link-local, multicast and "
        "reserved addresses."),
    rows_per_part: int = typer.Option(20_000, "--rows-per-part", min=1, metavar="N",
                                      help="Parquet: rows per part file while running."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Start afresh instead of resuming OUTPUT."),
    retry_errors: bool = typer.Option(
        False, "--retry-errors",
        help="Also redo the rows of OUTPUT with any error (rows marked retryable are "
        "always redone)."),
) -> None:
    """Annotate every post of INPUT with the pipeline MODEL and write one row per
    post to OUTPUT: the carried columns, entities (text, label, start_char,
    end_char), the visual context, the view, and any image, knowledge or row
    error. Rerun after a crash: rows already in OUTPUT are skipped, except
    those marked retryable (the LM or the cache failed), which are redone."""
    try:
        summary = apply(
            model, input_path, output, text_column=text_column, image_column=image_column or None,
            keep=[name.strip() for name in keep.split(",") if name.strip()] if keep else None,
            image_root=image_root, allow_private_urls=allow_private_urls,
            engine=engine, batch_size=batch_size, n_process=n_process, ocr=ocr.value, tags=tags,
            add_context=add_context, cache=cache, gpu_id=gpu_id, precision=precision, code=code,
            workers=workers,
            worker_cpus=worker_cpus, worker_gpus=worker_gpus, extract_workers=extract_workers,
            extract_cpus=extract_cpus, max_image_bytes=max_image_bytes,
            fetch_timeout=fetch_timeout, rows_per_part=rows_per_part, overwrite=overwrite,
            retry_errors=retry_errors)
    except (ValueError, OSError, RuntimeError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1) from None
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
        typer.echo("Error: every row failed; see the error columns of OUTPUT.", err=True)
        raise typer.Exit(code=1)
