"""The FastAPI app of `spacy_ita serve`: `GET /health`, `POST /annotate` and
the page at `/` to try a model on a post and its photo.

The pipeline is loaded once by the caller and handed to `create_app`. A
request is checked (body size, JSON, fields), its image URLs are fetched
under `apply`'s trust model (unless no component reads images; a request's
downloads together are capped), and its posts are tagged by the batching worker
together with the other requests waiting (see batching.py). A bad post gets
its errors in its result, never a 500.
"""
import dataclasses
import hmac
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from spacy.language import Language

from ..bulk.fetch import Fetcher
from ..context.images import DEFAULT_MAX_PIXELS, ImageError
from .batching import BatchFailed, Batcher, PostTagger, QueueFull
from .schema import PostLimits, RequestError, parse_request

STATIC = Path(__file__).with_name("static")
SERVED_VIEWS = ("cross", "text")  # `entities` as the pipeline reads the post; `text_view`: text only
DEFAULT_MAX_BODY_BYTES = 16 * 2**20  # room for a data: URL of a 10 MiB photo (base64: 4/3)
DEFAULT_MAX_IMAGE_BYTES = 10 * 2**20


@dataclass
class ServeSettings:
    """The server's limits and batching; `api_key` None: no key needed."""

    api_key: Optional[str] = field(default=None, repr=False)
    model_name: Optional[str] = None  # shown by /health; None: the pipeline's meta name
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_posts: int = 256  # per request
    max_text_chars: int = 10_000  # per post (a tweet has 280)
    max_context_chars: int = 20_000  # per post, its context items together
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    # Per request, its image URLs together; None: max_body_bytes, what data: URLs could bring.
    max_download_bytes: Optional[int] = None
    fetch_timeout: float = 10.0  # seconds for the whole download of one image URL
    allow_private_urls: bool = False
    batch_size: int = 32  # posts per pipeline call at most
    batch_wait: float = 0.005  # seconds a batch waits for more posts once it has one
    batch_gap: float = 0.001  # seconds it waits for the next request at most
    queue_size: int = 256  # requests waiting at most; more get 503


def create_app(nlp: Language, settings: Optional[ServeSettings] = None) -> FastAPI:
    """The app serving `nlp` (which must have an ita_ner component)."""
    settings = settings or ServeSettings()
    tagger = PostTagger(nlp, settings.max_image_pixels)
    batcher = Batcher(tagger, settings.batch_size, settings.batch_wait, settings.queue_size,
                      settings.batch_gap)
    fetcher = Fetcher(max_bytes=settings.max_image_bytes, timeout=settings.fetch_timeout,
                      allow_private_urls=settings.allow_private_urls)
    status = health_status(nlp, tagger, settings)
    limits = PostLimits(settings.max_text_chars, settings.max_context_chars)
    download_limit = (settings.max_body_bytes if settings.max_download_bytes is None
                      else settings.max_download_bytes)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    # No /docs: FastAPI's documentation pages load their scripts from a CDN.
    app = FastAPI(title="spacy-ita", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    needs_key = [Depends(bearer_key_check(settings.api_key))] if settings.api_key else []

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    def health() -> Dict[str, Any]:
        return status

    @app.post("/annotate", dependencies=needs_key)
    async def annotate(request: Request) -> JSONResponse:
        # The body is not kept: a request waiting for its batch holds only its posts.
        parsed = parse_request(await read_body(request, settings.max_body_bytes),
                               settings.max_posts, limits)
        # Without a context component no image is read: nothing to fetch (PostTagger says so).
        if tagger.context_names and any(post.image is not None for post in parsed.posts):
            budget = DownloadBudget(download_limit)
            request_fetcher = dataclasses.replace(fetcher, count_bytes=budget.take)
            await run_in_threadpool(request_fetcher.fetch_posts, parsed.posts)
        results = await batcher.submit(parsed.posts, parsed.text_view)
        # Results are plain JSON already: FastAPI's encoder would walk them again.
        return JSONResponse({"results": results} if parsed.batch else results[0])

    @app.exception_handler(RequestError)
    def refuse(_request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status)

    @app.exception_handler(BatchFailed)
    def failed(_request: Request, err: BatchFailed) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=500)

    @app.exception_handler(QueueFull)
    def overloaded(_request: Request, err: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": f"the server is busy: {err}; try again shortly"},
                            status_code=503, headers={"Retry-After": "1"})

    return app


class DownloadBudget:
    """The bytes one request's image URLs may download together, shared by the
    fetching threads: the body limit does not bound them."""

    def __init__(self, limit: int):
        self.limit = limit
        self._left = limit
        self._lock = threading.Lock()

    def take(self, size: int, what: str) -> None:
        """Count `size` more bytes of `what`; ImageError, counting none, when they do not fit."""
        with self._lock:
            fits = size <= self._left
            if fits:
                self._left -= size
        if not fits:
            raise ImageError(f"{what}: the request's image downloads would go over the limit "
                             f"of {self.limit:,} bytes in all (--max-download-bytes)")


def health_status(nlp: Language, tagger: PostTagger, settings: ServeSettings) -> Dict[str, Any]:
    """What /health says: the model, its labels and views, the encoder's
    precision, whether images are read and whether a key is needed."""
    ner = tagger.ner
    name = settings.model_name or f"{nlp.meta.get('lang')}_{nlp.meta.get('name')}"
    return {"status": "ok", "model": name, "version": nlp.meta.get("version"),
            "labels": list(ner.labels), "view": ner.view, "views": list(SERVED_VIEWS),
            "precision": ner.precision_in_effect, "reads_images": bool(tagger.context_names),
            "api_key_required": settings.api_key is not None}


def bearer_key_check(api_key: str):
    """A dependency that refuses (401) a request without `Authorization: Bearer
    <api_key>`; the comparison takes the same time whatever the key sent."""
    expected = api_key.encode("utf-8")

    def check(authorization: Optional[str] = Header(None)) -> None:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("utf-8"), expected):
            raise HTTPException(401, "this endpoint needs the header 'Authorization: Bearer "
                                     "<key>' with the server's API key",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; RequestError 413 once it is over `limit` bytes (read
    no further than that)."""
    too_large = RequestError(413, f"the request body is over the limit of {limit:,} bytes "
                                  "(--max-body-bytes)")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
