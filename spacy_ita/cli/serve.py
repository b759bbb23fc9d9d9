"""`python -m spacy_ita serve MODEL`: an HTTP API and a page to try a model."""
import os
from pathlib import Path
from typing import Optional

import typer

from ..context.config import OCREngine
from ..serve.batching import DEFAULT_MAX_QUEUED_BYTES, MAX_WAIT
from .options import PIPELINE_OPTIONS, pipeline_settings
from . import app

MIB = 2**20
MAX_WAIT_MS = int(MAX_WAIT * 1000)  # --batch-wait-ms and --batch-gap-ms at most


def read_api_key(env_name: Optional[str]) -> Optional[str]:
    """The API key from the environment variable `env_name` (None: no key);
    ValueError when that variable is unset, empty or not printable ASCII (an
    HTTP header carries no other key reliably). The key itself is never printed."""
    if env_name is None:
        return None
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise ValueError(f"--api-key-env {env_name}: the environment variable {env_name} "
                         "is unset or empty; set it to the API key clients must send")
    if not (key.isascii() and key.isprintable()):
        raise ValueError(f"--api-key-env {env_name}: the key must be printable ASCII "
                         "characters (clients send it in an HTTP header)")
    return key


@app.command("serve")
def serve_cli(
    model: str = typer.Argument(..., help="Trained pipeline: a directory or an installed package."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", metavar="PORT", help="Port to listen on."),
    api_key_env: Optional[str] = typer.Option(
        None, "--api-key-env", metavar="NAME",
        help="Environment variable holding an API key: every endpoint but /health and the "
        "page then needs 'Authorization: Bearer <key>'."),
    allow_private_urls: bool = PIPELINE_OPTIONS["allow_private_urls"],
    max_body_bytes: int = typer.Option(16 * MIB, "--max-body-bytes", min=1, metavar="N",
                                       help="Larger request bodies get 413."),
    max_posts: int = typer.Option(256, "--max-posts", min=1, metavar="N",
                                  help="Posts per request at most."),
    max_text_chars: int = typer.Option(10_000, "--max-text-chars", min=1, metavar="N",
                                       help="Longer post texts are refused (422)."),
    max_context_chars: int = typer.Option(
        20_000, "--max-context-chars", min=0, metavar="N",
        help="Posts whose context items have more characters in all are refused (422); an "
        "item counts as at least 1 character, and empty or blank items are dropped."),
    max_image_bytes: int = typer.Option(
        10 * MIB, "--max-image-bytes", min=1, metavar="N",
        help="Larger images (data: URLs or downloads) are refused."),
    max_download_bytes: Optional[int] = typer.Option(
        None, "--max-download-bytes", min=1, metavar="N",
        help="Bytes one request's image URLs may download together; posts past it get an "
        "error (default: --max-body-bytes, as much as its data: URLs could bring)."),
    max_image_pixels: Optional[int] = typer.Option(
        None, "--max-image-pixels", min=1, metavar="N",
        help="Images with more pixels are refused (default: ita_context's 50 million)."),
    max_request_pixels: int = typer.Option(
        100_000_000, "--max-request-pixels", min=1, metavar="N",
        help="Pixels one request's images may have together, read from their headers before "
        "any is decoded (each post's image counts, repeats too); posts past it get an error "
        "and are tagged without their image. The default takes some 120 photos of 1200x675 "
        "and holds the tagging worker a few seconds at most: a small PNG of one colour "
        "decodes to millions of pixels."),
    fetch_timeout: float = typer.Option(10.0, "--fetch-timeout", metavar="SECONDS",
                                        help="Seconds to download one image URL."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, metavar="N",
                                   help="A batch takes waiting requests until it holds N "
                                   "posts (a request with more runs whole)."),
    batch_wait_ms: float = typer.Option(
        5.0, "--batch-wait-ms", metavar="MS",
        help=f"Milliseconds a batch waits for more requests once it has one (at most "
        f"{MAX_WAIT_MS:,})."),
    batch_gap_ms: float = typer.Option(
        1.0, "--batch-gap-ms", metavar="MS",
        help=f"Milliseconds it waits for the next request: a quiet queue ends the batch (at "
        f"most {MAX_WAIT_MS:,})."),
    queue_size: int = typer.Option(256, "--queue-size", min=1, metavar="N",
                                   help="Requests waiting at most; more get 503."),
    max_queued_bytes: int = typer.Option(
        DEFAULT_MAX_QUEUED_BYTES, "--max-queued-bytes", min=1, metavar="N",
        help="Bytes of images, texts and contexts the requests waiting for the tagging worker "
        "(and those it runs) may hold together; more get 503 with Retry-After. A request "
        "over it alone is taken once none other is held. The default, 256 MiB, holds 8 requests "
        "with the most image bytes --max-body-bytes and --max-download-bytes let in."),
    access_log: bool = typer.Option(
        False, "--access-log", help="Log a line per request (about 10 % of the posts/s "
        "under load from 8 clients; the API key is never logged)."),
    ocr: OCREngine = PIPELINE_OPTIONS["ocr"],
    tags: bool = PIPELINE_OPTIONS["tags"],
    add_context: bool = PIPELINE_OPTIONS["add_context"],
    cache: Optional[Path] = PIPELINE_OPTIONS["cache"],
    gpu_id: int = PIPELINE_OPTIONS["gpu_id"],
    precision: Optional[str] = PIPELINE_OPTIONS["precision"],
    code: Optional[Path] = PIPELINE_OPTIONS["code"],
) -> None:
    """Serve MODEL over HTTP: GET /health, POST /annotate (a post or a batch
    under "posts": text, image URL or data: URL, context) and a page at / to
    try it on a post and a photo, cross-modal and text-only views side by
    side. Concurrent requests are tagged together in batches."""
    try:
        import uvicorn

        from ..serve.app import ServeSettings, create_app
    except ImportError as err:
        typer.echo(f"Error: serving needs the serve extra ({err}): "
                   "pip install 'spacy-ita[serve]'", err=True)
        raise typer.Exit(code=1) from None
    from ..bulk.annotate import ENVIRONMENT_ERRORS, PipelineSpec, preflight_components

    try:
        if not 0 <= port <= 65535:
            raise ValueError(f"--port must be from 0 to 65535, got {port}")
        for option, ms in (("--batch-wait-ms", batch_wait_ms), ("--batch-gap-ms", batch_gap_ms)):
            if not 0 <= ms <= MAX_WAIT_MS:  # NaN fails both comparisons
                raise ValueError(f"{option} must be from 0 to {MAX_WAIT_MS:,} milliseconds, "
                                 f"got {ms:g}")
        api_key = read_api_key(api_key_env)
        spec = PipelineSpec(model, pipeline_settings(add_context, ocr, tags, cache, gpu_id,
                                                     precision, code))
        nlp = spec.load()
        preflight_components(nlp)  # an LM endpoint that is down fails here, not every post
        settings = ServeSettings(
            api_key=api_key, model_name=model, max_body_bytes=max_body_bytes,
            max_posts=max_posts, max_text_chars=max_text_chars,
            max_context_chars=max_context_chars, max_image_bytes=max_image_bytes,
            max_download_bytes=max_download_bytes, max_request_pixels=max_request_pixels,
            fetch_timeout=fetch_timeout, allow_private_urls=allow_private_urls,
            batch_size=batch_size, batch_wait=batch_wait_ms / 1000, batch_gap=batch_gap_ms / 1000,
            queue_size=queue_size, max_queued_bytes=max_queued_bytes,
            **({"max_image_pixels": max_image_pixels} if max_image_pixels else {}))
        server_app = create_app(nlp, settings)
    except (ValueError, *ENVIRONMENT_ERRORS) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1) from None
    uvicorn.run(server_app, host=host, port=port, log_level="info", access_log=access_log)
