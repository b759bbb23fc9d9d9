"""Image URLs for `apply`: fetched with a size cap, a deadline and a few retries.

A post whose image cannot be fetched keeps its text: it is tagged with the
text-only view and its `image_error` says what happened to the URL.
"""
import http.client
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import List

from ..about import __version__
from ..context.images import DEFAULT_MAX_BYTES, ImageError
from .inputs import Post

CHUNK = 1 << 16


@dataclass
class Fetcher:
    """Downloads the http(s) images of a batch of posts, several at a time."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = 20.0  # seconds for the whole download of one image
    retries: int = 2  # more tries after a timeout, a lost connection or an HTTP 5xx
    threads: int = 8

    def fetch_posts(self, posts: List[Post]) -> None:
        """Replace each URL image by its bytes, or record why it failed."""
        todo = [post for post in posts if isinstance(post.image, str)
                and post.image.lower().startswith(("http://", "https://"))]
        if not todo:
            return
        with ThreadPoolExecutor(min(self.threads, len(todo))) as pool:
            results = list(pool.map(self._fetch_or_error, [post.image for post in todo]))
        for post, result in zip(todo, results):
            if isinstance(result, ImageError):
                post.image, post.image_error = None, f"{post.where}: {result}"
            else:
                post.image = result

    def _fetch_or_error(self, url: str):
        try:
            return self.fetch(url)
        except ImageError as err:
            return err

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`; ImageError when it is refused, too big or unreachable."""
        for attempt in range(self.retries + 1):
            try:
                return self._download(url)
            except _Transient as err:
                if attempt == self.retries:
                    raise ImageError(f"image URL {url!r} could not be fetched after "
                                     f"{attempt + 1} tries: {err}") from None
                time.sleep(0.2 * 2 ** attempt)
        raise AssertionError("unreachable")

    def _download(self, url: str) -> bytes:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": f"spacy-ita/{__version__}"})
        except ValueError as err:
            raise ImageError(f"image URL {url!r} is not valid: {err}") from None
        deadline = time.monotonic() + self.timeout
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self.max_bytes:
                    raise ImageError(f"image URL {url!r} is {int(length):,} bytes, over the "
                                     f"limit of {self.max_bytes:,} bytes (max_bytes)")
                chunks, size = [], 0
                while True:
                    if time.monotonic() > deadline:
                        raise _Transient(f"took longer than {self.timeout:g} s")
                    chunk = response.read1(CHUNK)  # what has arrived, not a full CHUNK
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ImageError(f"image URL {url!r} sent more than the limit of "
                                         f"{self.max_bytes:,} bytes (max_bytes)")
                    chunks.append(chunk)
        except urllib.error.HTTPError as err:
            if err.code >= 500:
                raise _Transient(f"HTTP {err.code} {err.reason}") from None
            raise ImageError(f"image URL {url!r}: HTTP {err.code} {err.reason}") from None
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets
            reason = getattr(err, "reason", err)
            raise _Transient(f"{type(reason).__name__}: {reason}") from None
        return b"".join(chunks)


class _Transient(Exception):
    """A failure worth another try."""
