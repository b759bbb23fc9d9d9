"""The images of `apply`'s posts, under its trust model: a row chooses what is
read, so a local file must resolve inside the image root, a URL must be http(s)
to a public address (checked after DNS resolution and on every redirect), every
image is capped in bytes, and a download is bounded in time as a whole.

A post whose image is refused or cannot be fetched keeps its text: it is tagged
with the text-only view and its `image_error` says what happened, and which
option would allow it.
"""
import http.client
import ipaddress
import math
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, List, Optional, Tuple
from urllib.parse import quote, urljoin, urlsplit

from ..about import __version__
from ..context.images import DEFAULT_MAX_BYTES, ImageError
from ..watchdog import SocketWatchdog
from .inputs import Post

CHUNK = 1 << 16
MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
PRINTABLE_ASCII = "".join(map(chr, range(33, 127)))  # kept as is in a request path
# The kinds of address a row may not make a worker connect to, first match named.
NON_PUBLIC = ("loopback", "link_local", "site_local", "unspecified", "multicast", "reserved",
              "private")  # site_local: IPv6 only (fec0::/10, deprecated, still routed inside)

# getaddrinfo's answers for a name that does not exist or has no address (NXDOMAIN).
NAME_UNKNOWN = tuple(getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA")
                     if hasattr(socket, name))
Addresses = List[Tuple[int, Any]]  # (socket family, socket address) pairs


@dataclass
class Fetcher:
    """Checks and brings in the images of a batch of posts: local files against
    the image root and the byte cap, URLs downloaded several at a time."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = 20.0  # seconds for the whole download of one image, all tries included
    retries: int = 2  # more tries, while time is left, after a lost connection or HTTP 5xx
    threads: int = 8
    image_root: Optional[str] = None  # local images must resolve inside it; None: no local file
    allow_private_urls: bool = False  # also fetch from loopback, private, ... addresses
    # Called with the bytes a download brings and its name: the declared length before the
    # body, then what arrives beyond it (say to cap several downloads together); an
    # ImageError it raises ends that download.
    count_bytes: Optional[Callable[[int, str], None]] = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ValueError(f"--fetch-timeout must be a positive number of seconds, got "
                             f"{self.timeout}")
        if self.image_root is not None:  # resolved once, where the run starts
            self.image_root = os.path.realpath(self.image_root)

    def fetch_posts(self, posts: List[Post]) -> None:
        """Replace each URL image by its bytes and drop the images the rules
        refuse, recording why in the post's `image_error`."""
        urls = []
        for post in posts:
            if _is_url(post.image):
                urls.append(post)
            elif post.image is not None:
                try:
                    post.image = self.check_local(post.image)
                except Exception as err:  # an odd path costs its row only
                    error = _as_image_error(err, f"image path {post.image!r}", "checked")
                    post.image, post.image_error = None, f"{post.where}: {error}"
        if not urls:
            return
        with ThreadPoolExecutor(min(self.threads, len(urls))) as pool:
            results = list(pool.map(self._fetch_or_error, [post.image for post in urls]))
        for post, result in zip(urls, results):
            if isinstance(result, ImageError):
                post.image, post.image_error = None, f"{post.where}: {result}"
                post.retryable = post.retryable or isinstance(result, ImageUnreachable)
            else:
                post.image = result

    def check_local(self, image: Any) -> Any:
        """What to read: image bytes as they are, a path as the real path it was
        checked as (so that no symlink is followed again between the check and
        the read). Refuses bytes over `max_bytes`, and a path (symlinks followed)
        outside the image root or to a file over `max_bytes`."""
        if isinstance(image, (bytes, bytearray)):
            _check_size(len(image), self.max_bytes, "image bytes")
            return image
        path = os.fspath(image)
        real = os.path.realpath(path)
        if not _is_inside(real, self.image_root):
            resolved = "" if real == os.path.abspath(path) else f" (resolves to {real!r})"
            root = repr(self.image_root) if self.image_root else "(none set)"
            raise ImageError(f"image path {path!r}{resolved} is outside the image root "
                             f"{root}: refused (--image-root widens it)")
        try:
            size = os.stat(real).st_size
        except OSError:
            return real  # missing or unreadable: the pipeline's reader says which
        _check_size(size, self.max_bytes, f"image file {path!r}")
        return real

    def _fetch_or_error(self, url: str):
        """The bytes at `url`, or the ImageError that says why not: whatever
        goes wrong with one URL costs its row only, never the run."""
        try:
            return self.fetch(url)
        except Exception as err:
            return _as_image_error(err, f"image URL {url!r}", "fetched")

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`; ImageError when it is refused, too big or
        unreachable. A failure that may pass is tried again while time is left:
        `timeout` bounds all the tries together, not each."""
        deadline = time.monotonic() + self.timeout
        for attempt in range(self.retries + 1):
            try:
                return self._download(url, deadline)
            except _Transient as err:
                pause = 0.2 * 2 ** attempt
                if attempt == self.retries or time.monotonic() + pause >= deadline:
                    failure = ImageError if err.final else ImageUnreachable
                    tries = "1 try" if attempt == 0 else f"{attempt + 1} tries"
                    raise failure(f"image URL {url!r} could not be fetched after {tries}: "
                                  f"{err}") from None
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _download(self, url: str, deadline: float) -> bytes:
        """One try: follow up to MAX_REDIRECTS redirects, each target checked
        afresh, all before `deadline`."""
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            what = f"image URL {url!r}" + (f" (redirected to {target!r})" if target != url else "")
            location = self._get(target, what, deadline)
            if isinstance(location, bytes):
                return location
            target = urljoin(target, location)
        raise ImageError(f"image URL {url!r}: more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, what: str, deadline: float):
        """GET `url` from a checked address: the body's bytes, or the Location
        of a redirect (a str)."""
        scheme, host, port, path = _split(url, what)
        addresses = self._checked_addresses(host, port, what, deadline)
        connection_class = (http.client.HTTPSConnection if scheme == "https"
                            else http.client.HTTPConnection)
        # Host header and TLS server name stay `host`; the socket goes to the checked address.
        connection = connection_class(host, port, timeout=_remaining(deadline, self.timeout))
        watchdog = SocketWatchdog(deadline)
        # http.client's hook for opening its socket (instead of a lookup of `host`).
        connection._create_connection = partial(_connect, addresses, watchdog, self.timeout)
        try:
            connection.request("GET", path, headers={"User-Agent": f"spacy-ita/{__version__}"})
            response = connection.getresponse()
            if response.status in REDIRECT_STATUSES and response.getheader("Location"):
                return response.getheader("Location")
            if response.status >= 500 or response.status in (408, 429):
                raise _Transient(f"HTTP {response.status} {response.reason}")
            if not 200 <= response.status < 300:
                raise ImageError(f"{what}: HTTP {response.status} {response.reason}")
            body = self._read_body(response, what)
            if watchdog.fired:  # the shutdown may read as the end of the body
                raise _Transient(f"took longer than {self.timeout:g} s")
            return body
        except (ImageError, _Transient):
            raise
        except (UnicodeError, http.client.InvalidURL) as err:
            raise ImageError(f"{what} is not valid: {err}") from None
        except (OSError, http.client.HTTPException) as err:  # timeouts, resets, refusals
            if watchdog.fired or isinstance(err, TimeoutError):
                raise _Transient(f"took longer than {self.timeout:g} s") from None
            # Nothing listening: tried again now, but a dead host seldom comes back.
            raise _Transient(f"{type(err).__name__}: {err}",
                             final=isinstance(err, ConnectionRefusedError)) from None
        finally:
            watchdog.stop()
            connection.close()

    def _read_body(self, response: http.client.HTTPResponse, what: str) -> bytes:
        length = response.getheader("Content-Length")
        declared = int(length) if length and length.isdigit() else 0
        _check_size(declared, self.max_bytes, what)
        if self.count_bytes is not None:
            self.count_bytes(declared, what)
        chunks, size = [], 0
        while True:
            chunk = response.read1(CHUNK)  # what has arrived, not a full CHUNK
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_bytes:
                raise ImageError(f"{what} sent more than the limit of {self.max_bytes:,} "
                                 "bytes (--max-image-bytes)")
            if self.count_bytes is not None and size > declared:  # chunked, or none declared
                self.count_bytes(min(len(chunk), size - declared), what)
            chunks.append(chunk)

    def _checked_addresses(self, host: str, port: int, what: str, deadline: float) -> Addresses:
        """The addresses of `host`; ImageError when any is not public, unless
        private URLs are allowed."""
        addresses = [(family, sockaddr) for family, _, _, _, sockaddr
                     in _resolve(host, port, what, deadline, self.timeout)]
        if not self.allow_private_urls:
            for _, sockaddr in addresses:
                kind, address = non_public_kind(sockaddr[0]), sockaddr[0]
                if kind:
                    name = address if host == address else f"{host} resolves to {address}"
                    article = "an" if kind[0] in "aeiou" else "a"
                    raise ImageError(f"{what}: {name}, {article} {kind} address: refused "
                                     "(--allow-private-urls allows it)")
        return addresses


def non_public_kind(address: str) -> Optional[str]:
    """What keeps an IP address from being public ("loopback", "private", ...),
    None for a public one. An IPv6 address that carries IPv4 ones (IPv4-mapped,
    6to4, Teredo) is as non-public as any of them, since it can lead there."""
    ip = ipaddress.ip_address(address.split("%")[0])  # without an IPv6 zone
    if ip.version == 6:
        teredo = ip.teredo or ()  # (server, client)
        for carried in (ip.ipv4_mapped, ip.sixtofour, *teredo):
            kind = carried and non_public_kind(str(carried))
            if kind:
                return kind
    kind = next((kind for kind in NON_PUBLIC if getattr(ip, f"is_{kind}", False)), None)
    if kind is None and not ip.is_global:  # e.g. 100.64.0.0/10, shared by carriers
        kind = "non-global"
    return kind and kind.replace("_", "-")


def _is_url(image: Any) -> bool:
    return isinstance(image, str) and image.lower().startswith(("http://", "https://"))


def _is_inside(real_path: str, root: Optional[str]) -> bool:
    try:
        return root is not None and os.path.commonpath([real_path, root]) == root
    except ValueError:  # another drive
        return False


def _as_image_error(err: Exception, what: str, verb: str) -> ImageError:
    """`err` as an ImageError naming `what`: an unexpected error is kept with its type."""
    if isinstance(err, ImageError):
        return err
    return ImageError(f"{what} could not be {verb}: {type(err).__name__}: {err}")


def _check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise ImageError(f"{what} is {size:,} bytes, over the limit of {limit:,} bytes "
                         "(--max-image-bytes)")


def _split(url: str, what: str) -> Tuple[str, str, int, str]:
    """Scheme, host, port and request path of an http(s) URL; ImageError for any other."""
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as err:
        raise ImageError(f"{what} is not valid: {err}") from None
    if scheme not in ("http", "https"):
        raise ImageError(f"{what}: scheme {scheme!r} refused (only http and https are fetched)")
    if not host:
        raise ImageError(f"{what} is not valid: no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, quote(path, safe=PRINTABLE_ASCII)  # é -> %C3%A9, as browsers do


def _remaining(deadline: float, timeout: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Transient(f"took longer than {timeout:g} s")
    return left


def _resolve(host: str, port: int, what: str, deadline: float, timeout: float) -> list:
    """getaddrinfo, given up at the deadline (it has no timeout of its own).
    A name that cannot exist or does not is a final ImageError; a failure of
    the lookup itself (a DNS server not answering) may pass."""
    found = {}

    def look_up():
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as err:  # raised again below, in the fetching thread
            found["error"] = err

    thread = threading.Thread(target=look_up, daemon=True)
    thread.start()
    thread.join(_remaining(deadline, timeout))
    if thread.is_alive():
        raise _Transient(f"took longer than {timeout:g} s (resolving {host})")
    error = found.get("error")
    if isinstance(error, UnicodeError):  # IDNA: an empty label or one over 63 characters
        raise ImageError(f"{what} is not valid: host name {host!r}: {error}")
    if isinstance(error, socket.gaierror) and error.errno in NAME_UNKNOWN:
        raise ImageError(f"{what}: host {host} does not exist ({error.strerror})")
    if isinstance(error, OSError):
        raise _Transient(f"cannot resolve {host}: {error}")
    if error is not None:
        raise error
    return found["addresses"]


def _connect(addresses: Addresses, watchdog: SocketWatchdog, timeout: float,
             _address=None, _timeout=None, _source=None) -> socket.socket:
    """http.client's socket factory: a socket to the first checked address
    that answers, handed to the watchdog (http.client's own target and
    timeout are ignored)."""
    error: Optional[OSError] = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(_remaining(watchdog.deadline, timeout))
        try:
            sock.connect(sockaddr)
        except OSError as err:
            sock.close()
            error = err
            continue
        watchdog.watch(sock)
        return sock
    raise error or OSError("no address to connect to")


class ImageUnreachable(ImageError):
    """An image URL that failed for a reason that may pass (a timeout, a lost
    connection, HTTP 5xx): its row is retryable, and the next run fetches it again."""


class _Transient(Exception):
    """A failure worth another try; `final` when it is not worth another run
    once the tries are spent (nothing listening at the address)."""

    def __init__(self, message: str, final: bool = False):
        super().__init__(message)
        self.final = final
