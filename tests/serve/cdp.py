"""A small Chrome DevTools Protocol client: headless Chromium started with a
debugging port, driven over one websocket, for the page tests of `serve`
(and the screenshot in docs/img/)."""
import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, Optional

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """Headless Chromium with one page; `evaluate` runs JavaScript in it."""

    def __init__(self, width: int = 1200, height: int = 900, timeout: float = 60):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="spacy-ita-chromium-")
        self.connection = ExitStack()
        # No network but loopback: a proxy that does not exist, which Chromium skips for 127.0.0.1.
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--proxy-server=127.0.0.1:9", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "HOME": self.profile})
        try:
            port = self._debugging_port(timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                page = next(t for t in json.load(answer) if t["type"] == "page")
            self.socket = self.connection.enter_context(connect(
                page["webSocketDebuggerUrl"], max_size=2**26, open_timeout=timeout))
        except BaseException:
            self.close()
            raise
        self.ids = itertools.count(1)

    def _debugging_port(self, timeout: float) -> int:
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if active.exists() and active.read_text().strip():
                return int(active.read_text().split()[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            time.sleep(0.1)
        raise TimeoutError(f"chromium opened no debugging port in {timeout:g} s")

    def send(self, method: str, **params) -> Dict[str, Any]:
        """Call a DevTools method and return its result (events are skipped)."""
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, script: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.send("Runtime.evaluate", expression=script, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{script[:60]!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, script: str, timeout: float = 60) -> Any:
        """Evaluate `script` until it is truthy; its value. A script that
        throws is tried again (a page that is still loading has no body yet)."""
        deadline = time.monotonic() + timeout
        error: Optional[Exception] = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(script)
            except RuntimeError as err:
                value, error = None, err
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{script!r} stayed false for {timeout:g} s (last error: {error})")

    def open(self, url: str) -> None:
        """Go to `url` and wait until it has loaded."""
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def screenshot(self, path: Optional[Path] = None) -> bytes:
        """The page as PNG bytes, whole (not just the window), also written to `path`."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        png = base64.b64decode(self.send("Page.captureScreenshot", format="png", clip=clip,
                                         captureBeyondViewport=True)["data"])
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def close(self) -> None:
        self.connection.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def pick_file(browser: Browser, input_id: str, data: bytes, name: str, mime: str) -> None:
    """Give the file input `input_id` a file, as if the user had picked it."""
    encoded = base64.b64encode(data).decode("ascii")
    browser.evaluate(f"""(() => {{
        const bytes = Uint8Array.from(atob("{encoded}"), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], {json.dumps(name)}, {{ type: {json.dumps(mime)} }}));
        const input = document.getElementById({json.dumps(input_id)});
        input.files = transfer.files;
        input.dispatchEvent(new Event("change"));
    }})()""")
