"""Fixtures of the `spacy_ita serve` tests: a tiny trained pipeline whose
ita_context reads an image's dominant colour (tests/bulk/apply_code.py), saved to
disk; red, blue and noise PNGs; a local image server that records what it is
asked for; and the CLI's server on a free loopback port, with an API key."""
import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import spacy

from helpers import REPO_ROOT, trained_pipeline
from serve_helpers import API_KEY, API_KEY_ENV, noise_png, png_bytes

APPLY_CODE = REPO_ROOT / "tests" / "bulk" / "apply_code.py"
if "apply_code" not in sys.modules:  # tests/bulk imports it by that name too: once only
    sys.modules["apply_code"] = spacy.util.import_file("apply_code", APPLY_CODE)


@pytest.fixture(scope="session")
def model_dir(tiny_encoder, tmp_path_factory) -> Path:
    """The shared trained pipeline with an ita_context (colour tags, no OCR) first."""
    path = tmp_path_factory.mktemp("serve_model") / "pipeline"
    trained_pipeline(tiny_encoder).to_disk(path)  # a copy: the shared one stays as it is
    nlp = spacy.load(path)
    nlp.add_pipe("ita_context", first=True, config={
        "ocr_text": None, "object_tags": {"@spacy_ita_extractors": "apply_test.colour_tags.v1"}})
    nlp.to_disk(path)
    return path


@pytest.fixture
def nlp(model_dir):
    """A fresh load of the pipeline, one per test (the app changes its settings)."""
    return spacy.load(model_dir)


@pytest.fixture(scope="session")
def image_httpd(tmp_path_factory):
    """An HTTP server on 127.0.0.1 serving red.png, blue.png and noise.png, and
    under /unsized/ the same without a Content-Length; the paths it was asked
    for are in its `requested` list."""
    folder = tmp_path_factory.mktemp("serve_images")
    (folder / "red.png").write_bytes(png_bytes((230, 20, 20)))
    (folder / "blue.png").write_bytes(png_bytes((20, 20, 230)))
    (folder / "noise.png").write_bytes(noise_png())
    handler = partial(_RecordingHandler, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requested = []
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def image_server(image_httpd) -> str:
    """The image server's base URL."""
    return f"http://127.0.0.1:{image_httpd.server_address[1]}"


class _RecordingHandler(SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requested.append(self.path)
        if not self.path.startswith("/unsized/"):
            return super().do_GET()
        body = Path(self.directory, urlsplit(self.path).path[len("/unsized/"):]).read_bytes()
        self.send_response(200)
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory):
    """`python -m spacy_ita serve` (uvicorn) on a free loopback port, with an
    API key and private URLs allowed: its base URL and log file."""
    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    env = {**os.environ, API_KEY_ENV: API_KEY, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "spacy_ita", "serve", str(model_dir), "--port", str(port),
               "--api-key-env", API_KEY_ENV, "--allow-private-urls", "--access-log",
               "--code", str(APPLY_CODE)]
    with open(log, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log, httpx)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, httpx) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n"
                               f"{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer in 120 s:\n{log.read_text()[-3000:]}")
