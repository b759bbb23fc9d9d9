"""The FastAPI app of `spacy_ita serve`: `GET /health`, `POST /annotate` and
the page at `/` to try a model on a post and its photo.

The pipeline is loaded once by the caller and handed to `create_app`. A
request is checked (body size, JSON, fields), its image URLs are fetched
under `apply`'s trust model (unless no component reads images; a request's
downloads together are capped, and so are the pixels its images would have the
worker decode), and its posts are tagged by the batching worker together with
the other requests waiting (see batching.py). A bad post gets its errors in its
result, never a 500.
"""
import dataclasses
import hmac
import io
import threading
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from spacy.language import Language

from ..bulk.fetch import Fetcher
from ..bulk.inputs import Post
from ..context.images import DEFAULT_MAX_PIXELS, ImageError
from .batching import DEFAULT_MAX_QUEUED_BYTES, BatchFailed, Batcher, PostTagger, QueueFull
from .schema import PostLimits, RequestError, parse_request

STATIC = Path(__file__).with_name("static")
SERVED_VIEWS = ("cross", "text")  # `entities` as the pipeline reads the post; `text_view`: text only
DEFAULT_MAX_BODY_BYTES = 16 * 2**20  # room for a data: URL of a 10 MiB photo (base64: 4/3)
DEFAULT_MAX_IMAGE_BYTES = 10 * 2**20
# Some 120 photos of 1200x675 (about what the download limit lets a request bring), twice
# the largest image ita_context reads: a few seconds of decoding for the worker at most.
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000


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
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # per request, its images together
    fetch_timeout: float = 10.0  # seconds for the whole download of one image URL
    allow_private_urls: bool = False
    batch_size: int = 32  # posts per pipeline call at most
    batch_wait: float = 0.005  # seconds a batch waits for more posts once it has one
    batch_gap: float = 0.001  # seconds it waits for the next request at most
    queue_size: int = 256  # requests waiting at most; more get 503
    # Bytes of images, texts and contexts the worker's requests hold at most; more get 503.
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES


def create_app(nlp: Language, settings: Optional[ServeSettings] = None) -> FastAPI:
    """The app serving `nlp` (which must have an ita_ner component)."""
    settings = settings or ServeSettings()
    tagger = PostTagger(nlp, settings.max_image_pixels)
    batcher = Batcher(tagger, settings.batch_size, settings.batch_wait, settings.queue_size,
                      settings.batch_gap, settings.max_queued_bytes)
    fetcher = Fetcher(max_bytes=settings.max_image_bytes, timeout=settings.fetch_timeout,
                      allow_private_urls=settings.allow_private_urls)
    status = health_status(nlp, tagger, settings)
    limits = PostLimits(settings.max_text_chars, settings.max_context_chars)
    download_limit = (settings.max_body_bytes if settings.max_download_bytes is None
                      else settings.max_download_bytes)

    def read_images(posts: List[Post]) -> None:
        """Fetch the posts' image URLs, then count the pixels of their images
        from their headers: a small request naming a small PNG of 49 million
        pixels many times held the only worker for minutes of decoding."""
        downloads = RequestBudget(download_limit, "image downloads", "bytes",
                                  "--max-download-bytes")
        dataclasses.replace(fetcher, count_bytes=downloads.take).fetch_posts(posts)
        pixels = RequestBudget(settings.max_request_pixels, "images", "pixels",
                               "--max-request-pixels")
        for post in posts:
            take_pixels(post, pixels, settings.max_image_pixels)

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
            await run_in_threadpool(read_images, parsed.posts)
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


class RequestBudget:
    """What one request's images may cost together (bytes downloaded, pixels
    decoded), shared by the fetching threads: the limits per image and on the
    body do not bound them. `spent` says on what, `unit` in what, `option` which
    option sets the limit."""

    def __init__(self, limit: int, spent: str, unit: str, option: str):
        self.limit = limit
        self.spent = spent
        self.unit = unit
        self.option = option
        self._left = limit
        self._lock = threading.Lock()

    def take(self, size: int, what: str) -> None:
        """Count `size` more of `what`; ImageError, counting none, when it does not fit."""
        with self._lock:
            fits = size <= self._left
            if fits:
                self._left -= size
        if not fits:
            raise ImageError(f"{what}: the request's {self.spent} would go over the limit of "
                             f"{self.limit:,} {self.unit} in all ({self.option})")


def take_pixels(post: Post, budget: RequestBudget, max_image_pixels: int) -> None:
    """Count the pixels the pipeline would decode of the post's image bytes,
    from their header (PIL reads no more); past the budget the image is dropped
    and the post tagged without it, its error saying why. Bytes PIL cannot read,
    and an image over `max_image_pixels`, are refused undecoded: they count 0."""
    if not isinstance(post.image, bytes):  # None: no image, or it could not be fetched
        return
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(post.image)) as header:
                width, height = header.size
    except Exception:  # the pipeline's decode_image fails on it alike and says why
        return
    if width * height > max_image_pixels:  # refused by the pipeline before decoding
        return
    try:
        budget.take(width * height, f"image {width}x{height}")
    except ImageError as err:
        post.image, post.image_error = None, f"{post.where}: {err}"


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
