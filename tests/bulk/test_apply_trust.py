"""`apply`'s trust model for what a row may make it read: local images only
inside the image root, image URLs only http(s) to public addresses (after DNS
and on every redirect), every image under --max-image-bytes, and a download
bounded in time as a whole.

The pipeline is only an `ita_context` with the cheap colour extractor of
tests/bulk/apply_code.py: an image that was read shows as its colour tag.
"""
import os
import re
import socket
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import spacy
from PIL import Image

import apply_code  # noqa: F401  (registers the colour extractor)
from test_apply import by_id, read_jsonl, write_jsonl

from spacy_ita.bulk import LocalSettings, apply
from spacy_ita.bulk import fetch
from spacy_ita.bulk.fetch import Fetcher, non_public_kind
from spacy_ita.bulk.inputs import Post
from spacy_ita.context.images import read_image_source


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> str:
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_context", config={
        "ocr_text": None, "object_tags": {"@spacy_ita_extractors": "apply_test.colour_tags.v1"}})
    path = tmp_path_factory.mktemp("trust_pipeline") / "pipeline"
    nlp.to_disk(path)
    return str(path)


@pytest.fixture
def folders(tmp_path):
    """posts/ (the input's folder, with red.png and a link out), outside/ (blue.png)."""
    posts, outside = tmp_path / "posts", tmp_path / "outside"
    posts.mkdir()
    outside.mkdir()
    Image.new("RGB", (24, 16), (230, 20, 20)).save(posts / "red.png")
    Image.new("RGB", (24, 16), (20, 20, 230)).save(outside / "blue.png")
    (posts / "link-out.png").symlink_to(outside / "blue.png")
    (posts / "link-in.png").symlink_to(posts / "red.png")
    return posts, outside


def tags(row):
    return row["visual_context"] and row["visual_context"]["object_tags"]


def test_local_images_must_resolve_inside_the_image_root(pipeline, folders, tmp_path):
    posts, outside = folders
    images = {"relative": "red.png", "inside-link": "link-in.png",
              "inside-file-url": (posts / "red.png").as_uri(),
              "absolute": str(outside / "blue.png"), "dotdot": "../outside/blue.png",
              "link-out": "link-out.png", "file-url": (outside / "blue.png").as_uri()}
    write_jsonl(posts / "in.jsonl", [{"id": name, "text": "Kobe scores", "image": image}
                                     for name, image in images.items()])
    apply(pipeline, posts / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    for name in ("relative", "inside-link", "inside-file-url"):
        assert tags(rows[name]) == ["red"] and rows[name]["image_error"] is None
    for name in ("absolute", "dotdot", "link-out", "file-url"):
        error = rows[name]["image_error"]
        assert tags(rows[name]) is None
        assert f"in.jsonl, line {list(images).index(name) + 1}: image path" in error
        assert f"outside the image root {str(posts)!r}: refused (--image-root widens it)" in error
    assert f"resolves to {str(outside / 'blue.png')!r}" in rows["link-out"]["image_error"]
    # A root that holds both folders lets every row read its image.
    apply(pipeline, posts / "in.jsonl", tmp_path / "wide.jsonl",
          images=Fetcher(image_root=tmp_path), progress=False)
    wide = by_id(read_jsonl(tmp_path / "wide.jsonl"))
    assert all(row["image_error"] is None for row in wide.values())
    assert tags(wide["link-out"]) == tags(wide["file-url"]) == ["blue"]


def test_an_image_root_that_is_not_a_folder_is_refused(pipeline, folders, tmp_path):
    posts, _ = folders
    write_jsonl(posts / "in.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match="image_root .*nowhere.* is not a folder"):
        apply(pipeline, posts / "in.jsonl", tmp_path / "out.jsonl",
              images=Fetcher(image_root=tmp_path / "nowhere"), progress=False)


def test_max_image_bytes_caps_files_and_bytes_as_downloads(pipeline, folders, tmp_path):
    posts, _ = folders
    noise = Image.effect_noise((64, 64), 100).convert("RGB")
    noise.save(posts / "big.png")
    size = (posts / "big.png").stat().st_size
    limit = (posts / "red.png").stat().st_size + 10
    assert size > limit
    write_jsonl(posts / "in.jsonl", [{"id": "small", "text": "a", "image": "red.png"},
                                     {"id": "big", "text": "b", "image": "big.png"}])
    apply(pipeline, posts / "in.jsonl", tmp_path / "out.jsonl", images=Fetcher(max_bytes=limit),
          progress=False)
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert tags(rows["small"]) == ["red"]
    assert (f"image file {str(posts / 'big.png')!r} is {size:,} bytes, over the limit of "
            f"{limit:,} bytes (--max-image-bytes)") in rows["big"]["image_error"]
    post = Post("f", 0, "f, row 1", text="x", image=(posts / "big.png").read_bytes())
    Fetcher(max_bytes=limit).fetch_posts([post])
    assert post.image is None and "f, row 1: image bytes is" in post.image_error


class _Handler(SimpleHTTPRequestHandler):
    """Serves a folder, plus /redirect?to=URL, /host (echoes the Host header),
    /drip-headers, /drip-body (a byte every 0.1 s for 3 s) and /down/NAME (503
    while `down` is set, then the file NAME)."""

    down = True

    def do_GET(self):
        path, query = self.path.split("?")[0], parse_qs(urlsplit(self.path).query)
        if path.startswith("/down/") and _Handler.down:
            self.send_error(503)
        elif path.startswith("/down/"):
            self.path = self.path[len("/down"):]
            super().do_GET()
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"][0])
            self.end_headers()
        elif path == "/host":
            self._send(self.headers["Host"].encode())
        elif path.startswith("/drip-"):
            self._drip(path == "/drip-headers")
        else:
            super().do_GET()

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drip(self, headers: bool) -> None:
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            if not headers:
                self.wfile.write(b"Content-Length: 30\r\n\r\n")
            for _ in range(30):
                self.wfile.write(b"X" if not headers else b"X-Drip: 1\r\n")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:  # the client hung up
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(folders):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(folders[0])))
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_loopback_urls_are_refused_unless_allowed(pipeline, folders, server, tmp_path):
    """Refused by default, by address and by a name that resolves to one;
    --allow-private-urls (through the CLI) fetches them."""
    from typer.testing import CliRunner

    from spacy_ita.cli import app

    posts, _ = folders
    write_jsonl(posts / "in.jsonl", [
        {"id": "ip", "text": "a", "image": f"http://127.0.0.1:{server}/red.png"},
        {"id": "name", "text": "b", "image": f"http://localhost:{server}/red.png"}])
    apply(pipeline, posts / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert (f"in.jsonl, line 1: image URL 'http://127.0.0.1:{server}/red.png': 127.0.0.1, a "
            "loopback address: refused (--allow-private-urls allows it)"
            in rows["ip"]["image_error"])
    assert "localhost resolves to " in rows["name"]["image_error"]
    assert "loopback address: refused" in rows["name"]["image_error"]
    assert tags(rows["ip"]) is None and tags(rows["name"]) is None
    result = CliRunner().invoke(app, ["apply", pipeline, str(posts / "in.jsonl"),
                                      str(tmp_path / "allowed.jsonl"), "--allow-private-urls"])
    assert result.exit_code == 0, result.output
    allowed = by_id(read_jsonl(tmp_path / "allowed.jsonl"))
    assert tags(allowed["ip"]) == tags(allowed["name"]) == ["red"]


@pytest.fixture
def loopback_is_public(monkeypatch):
    """127.0.0.1 counts as public, so that the test server stands for a public
    host and a redirect from it to another loopback address can be refused."""
    original = fetch.non_public_kind
    monkeypatch.setattr(fetch, "non_public_kind",
                        lambda address: None if address == "127.0.0.1" else original(address))


@pytest.mark.parametrize("target", ["http://127.0.0.2:{port}/red.png", "http://[::1]/x.png",
                                    "http://169.254.169.254/latest/meta-data/"])
def test_a_redirect_to_a_non_public_address_is_refused(server, loopback_is_public, target):
    target = target.format(port=server)
    fetcher = Fetcher(retries=0, timeout=5)
    assert fetcher.fetch(f"http://127.0.0.1:{server}/red.png")[:4] == b"\x89PNG"
    with pytest.raises(fetch.ImageError, match=rf"\(redirected to '{re.escape(target)}'\): "
                       r".* address: refused \(--allow-private-urls allows it\)"):
        fetcher.fetch(f"http://127.0.0.1:{server}/redirect?to={target}")


def test_a_redirect_to_ftp_is_refused(server):
    fetcher = Fetcher(retries=0, timeout=5, allow_private_urls=True)
    assert fetcher.fetch(f"http://127.0.0.1:{server}/redirect?to=/red.png")[:4] == b"\x89PNG"
    with pytest.raises(fetch.ImageError, match="redirected to 'ftp://example.com/x.png'.*"
                       "scheme 'ftp' refused"):
        fetcher.fetch(f"http://127.0.0.1:{server}/redirect?to=ftp://example.com/x.png")


def test_a_url_with_non_ascii_characters_is_fetched(folders, server):
    (folders[0] / "caffè latte.png").write_bytes((folders[0] / "red.png").read_bytes())
    fetcher = Fetcher(retries=0, timeout=5, allow_private_urls=True)
    image = fetcher.fetch(f"http://127.0.0.1:{server}/caffè latte.png")
    assert image == (folders[0] / "red.png").read_bytes()


def test_the_checked_address_is_the_one_connected_to(server, loopback_is_public, monkeypatch):
    """A name that resolves to a public address first and to a private one
    afterwards (DNS rebinding) is fetched from the first; the Host header keeps
    the name. A name with any non-public address is refused."""
    answers = {"rebound.test": [["127.0.0.1"], ["10.0.0.1"]], "mixed.test": [["127.0.0.1",
                                                                              "10.0.0.1"]]}

    def fake_getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in answers[host].pop(0)]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", fake_getaddrinfo)
    fetcher = Fetcher(retries=0, timeout=5)
    assert fetcher.fetch(f"http://rebound.test:{server}/host") == f"rebound.test:{server}".encode()
    with pytest.raises(fetch.ImageError, match="mixed.test resolves to 10.0.0.1, a private"):
        fetcher.fetch(f"http://mixed.test:{server}/host")


def test_a_refusal_names_the_kind_of_address():
    with pytest.raises(fetch.ImageError, match="0.0.0.0, an unspecified address: refused"):
        Fetcher(retries=0, timeout=5).fetch("http://0.0.0.0:9/x.png")
    with pytest.raises(ValueError, match="--fetch-timeout must be a positive number of seconds"):
        Fetcher(timeout=float("nan"))


@pytest.mark.parametrize("path", ["/drip-headers", "/drip-body"])
def test_the_timeout_bounds_the_whole_download(server, path):
    """The server sends a byte every 0.1 s for 3 s: each read is quick, the
    whole is not, and the fetch stops at its 0.5 s deadline."""
    post = Post("f", 0, "f, line 1", text="x", image=f"http://127.0.0.1:{server}{path}")
    start = time.monotonic()
    Fetcher(timeout=0.5, retries=0, allow_private_urls=True).fetch_posts([post])
    assert 0.45 < time.monotonic() - start < 1.2
    assert post.image is None and "took longer than 0.5 s" in post.image_error


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("10.1.2.3", "private"), ("192.168.0.1", "private"), ("fd00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1%eth0", "link-local"),
    ("224.0.0.1", "multicast"), ("240.0.0.1", "reserved"), ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "non-global"), ("93.184.216.34", None), ("2606:4700::1111", None),
    # IPv6 that leads to IPv4 (6to4, Teredo's client) is judged by it; fec0::/10 is site-local.
    ("2002:7f00:1::1", "loopback"), ("2002:a9fe:a9fe::1", "link-local"),
    ("2002:5db8:d822::1", None), ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
    ("fec0::1", "site-local")])
def test_which_addresses_are_not_public(address, kind):
    assert non_public_kind(address) == kind


def test_settings_reach_worker_processes(pipeline, folders, server, tmp_path):
    """With --n-process 2 the workers refuse and allow what one process does."""
    posts, outside = folders
    records = [{"id": "in", "text": "a", "image": "red.png"},
               {"id": "out", "text": "b", "image": str(outside / "blue.png")},
               {"id": "url", "text": "c", "image": f"http://127.0.0.1:{server}/red.png"}]
    write_jsonl(posts / "in.jsonl", records)
    apply(pipeline, posts / "in.jsonl", tmp_path / "two.jsonl", engine=LocalSettings(n_process=2),
          batch_size=1, progress=False)
    rows = by_id(read_jsonl(tmp_path / "two.jsonl"))
    assert tags(rows["in"]) == ["red"]
    assert "--image-root" in rows["out"]["image_error"]
    assert "--allow-private-urls" in rows["url"]["image_error"]


def test_an_image_server_that_is_down_makes_a_retryable_row(pipeline, folders, server, tmp_path,
                                                            monkeypatch):
    """HTTP 503 after every try is a failure that may pass: the row is marked
    retryable, and the next run fetches that image again (and only it)."""
    posts, _ = folders
    write_jsonl(posts / "in.jsonl", [
        {"id": "down", "text": "a", "image": f"http://127.0.0.1:{server}/down/red.png"},
        {"id": "file", "text": "b", "image": "red.png"}])
    monkeypatch.setattr(_Handler, "down", True)
    run = partial(apply, pipeline, posts / "in.jsonl", tmp_path / "out.jsonl",
                  images=Fetcher(allow_private_urls=True), progress=False)
    first = run()
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert rows["down"]["retryable"] and "HTTP 503" in rows["down"]["image_error"]
    assert not rows["file"]["retryable"] and tags(rows["file"]) == ["red"]
    assert (first.n_written, first.n_retryable) == (2, 1)
    monkeypatch.setattr(_Handler, "down", False)
    second = run()
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert (second.n_written, second.n_redone, second.n_skipped) == (1, 1, 1)
    assert len(rows) == 2
    assert by_id(rows)["down"]["image_error"] is None and tags(by_id(rows)["down"]) == ["red"]


def test_an_invalid_host_name_or_path_costs_only_its_row(pipeline, folders, tmp_path):
    """Host names IDNA cannot encode (a label over 63 characters, an empty
    one) and a path with a NUL byte are image errors of their rows; the run
    goes on and tags every post."""
    posts, _ = folders
    images = {"long-label": "http://" + "a" * 64 + ".example.com/x.png",
              "empty-label": "http://a..b/x.png", "nul": "red\x00.png", "fine": "red.png"}
    write_jsonl(posts / "in.jsonl", [{"id": name, "text": "Kobe scores", "image": image}
                                     for name, image in images.items()])
    summary = apply(pipeline, posts / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert (summary.n_written, summary.n_image_errors, summary.n_retryable) == (4, 3, 0)
    assert tags(rows["fine"]) == ["red"]
    for name in ("long-label", "empty-label"):
        assert "is not valid: host name" in rows[name]["image_error"]
    assert "could not be checked: ValueError: embedded null byte" in rows["nul"]["image_error"]


def test_an_unexpected_error_while_fetching_costs_only_its_row(monkeypatch):
    def broken(url, what):
        raise RuntimeError("boom")

    monkeypatch.setattr(fetch, "_split", broken)
    post = Post("f", 0, "f, line 1", text="x", image="http://example.com/x.png")
    Fetcher(retries=0).fetch_posts([post])
    assert post.image is None and not post.retryable
    assert post.image_error == ("f, line 1: image URL 'http://example.com/x.png' could not be "
                                "fetched: RuntimeError: boom")


def test_the_timeout_bounds_all_tries_together(server):
    """A timeout spends the whole --fetch-timeout: no more tries, however many
    are allowed, and the row stays retryable for the next run."""
    post = Post("f", 0, "f, line 1", text="x", image=f"http://127.0.0.1:{server}/drip-body")
    start = time.monotonic()
    Fetcher(timeout=0.5, retries=5, allow_private_urls=True).fetch_posts([post])
    assert 0.45 < time.monotonic() - start < 1.2
    assert "after 1 try: took longer than 0.5 s" in post.image_error and post.retryable


@pytest.mark.parametrize("errno, retryable, message", [
    (socket.EAI_NONAME, False, "host gone.test does not exist (no such name)"),
    (socket.EAI_AGAIN, True, "after 3 tries: cannot resolve gone.test")])
def test_a_name_that_does_not_exist_is_final(monkeypatch, errno, retryable, message):
    """NXDOMAIN is final (tried once); a DNS failure that may pass is tried
    again and leaves the row retryable."""
    lookups = []

    def failing_getaddrinfo(host, *args, **kwargs):
        lookups.append(host)
        raise socket.gaierror(errno, "no such name")

    monkeypatch.setattr(fetch.socket, "getaddrinfo", failing_getaddrinfo)
    post = Post("f", 0, "f, line 1", text="x", image="http://gone.test/x.png")
    Fetcher(timeout=5).fetch_posts([post])
    assert post.image is None and post.retryable is retryable
    assert message in post.image_error
    assert len(lookups) == (3 if retryable else 1)


def test_a_refused_connection_is_final_after_its_tries():
    """Nothing listening: tried again within the run, then a final error, as a
    dead host in scraped data seldom comes back."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/x.png"
        post = Post("f", 0, "f, line 1", text="x", image=url)
        Fetcher(timeout=5, allow_private_urls=True).fetch_posts([post])
    finally:
        closed.close()
    assert post.image is None and not post.retryable
    assert "after 3 tries: ConnectionRefusedError" in post.image_error


def test_a_symlink_is_not_followed_again_after_the_check(folders):
    """The checked real path is what the pipeline reads: a link swapped to
    point out of the root between check and read still reads the checked file."""
    posts, outside = folders
    post = Post("f", 0, "f, line 1", text="x", image=str(posts / "link-in.png"))
    Fetcher(image_root=str(posts)).fetch_posts([post])
    (posts / "link-in.png").unlink()
    (posts / "link-in.png").symlink_to(outside / "blue.png")
    assert post.image == os.path.realpath(posts / "red.png") and post.image_error is None
    assert read_image_source(post.image).data == (posts / "red.png").read_bytes()
