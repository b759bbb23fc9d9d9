"""An OpenAI-compatible chat server on 127.0.0.1 that answers as a test says, for the
tests of the `knowledge` extractor (context/test_llm_knowledge.py) and of `apply` with it
(bulk/test_apply_failures.py). No test reaches a real endpoint."""
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional

MODEL = "test-model"
KEY_ENV = "SPACY_ITA_TEST_LLM_KEY"
KEY = "sk-test-3f9a1c77e2b04d5a8c6e"


@dataclass
class Reply:
    """What the server answers to one chat request."""

    content: Optional[str] = '{"entities": []}'
    status: int = 200
    delay: float = 0.0
    headers: Dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"
    drip: float = 0.0  # seconds between the bytes of the body: a slow drip
    header_drip: float = 0.0  # seconds between the bytes of a 40-byte header
    content_length: bool = True  # without: the body ends when the connection closes


class _Server(ThreadingHTTPServer):
    """The standard threading server with room for many waiting connections:
    with the default backlog of 5, a burst of parallel requests loses
    connection attempts, which the client's kernel retries a second later."""

    request_queue_size = 128
    daemon_threads = True


class FakeLLM:
    """An OpenAI-compatible server on 127.0.0.1: GET /v1/models lists `models`,
    POST /v1/chat/completions answers with `reply(request)`. It records every
    chat request (headers with lower-case names), the most requests it had
    in flight at once, and the body bytes it got out before a client gave up."""

    def __init__(self, reply: Callable[[dict], Reply], models=(MODEL,)):
        self.reply = reply
        self.models = list(models)
        self.requests: List[dict] = []
        self.headers: List[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.bytes_sent = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status: int, body: dict, headers: Dict[str, str] = {},
                     reply: Reply = Reply()):
                data = json.dumps(body).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    if reply.content_length:
                        self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    if reply.header_drip:
                        self.flush_headers()
                        self.write_body(b"X-Pad: %s\r\n" % (b"a" * 32), reply.header_drip)
                    self.end_headers()
                    self.write_body(data, reply.drip)
                except OSError:  # the client gave up (a timeout or size test)
                    pass

            def write_body(self, data: bytes, drip: float):
                """The body a byte at a time every `drip` seconds, or in 64 KiB
                pieces through a small send buffer, counting what got out."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
                step = 1 if drip else 1 << 16
                for start in range(0, len(data), step):
                    self.wfile.write(data[start:start + step])
                    self.wfile.flush()
                    with server.lock:
                        server.bytes_sent += len(data[start:start + step])
                    if drip and server.stopping.wait(drip):
                        return

            def do_GET(self):
                if self.path.rstrip("/") != "/v1/models":
                    return self.send(404, {"error": {"message": "not found"}})
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "t"}
                        for m in server.models]
                self.send(200, {"object": "list", "data": data})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self.send(404, {"error": {"message": "not found"}})
                with server.lock:
                    server.requests.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.reply(body)
                    server.stopping.wait(reply.delay)
                finally:
                    with server.lock:
                        server.in_flight -= 1
                if reply.status != 200:
                    error = {"message": reply.content or "error", "type": "test_error"}
                    return self.send(reply.status, {"error": error}, reply.headers, reply)
                message = {"role": "assistant", "content": reply.content}
                self.send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": reply.finish_reason}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }, reply.headers, reply)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeLLM":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def post_text(request: dict) -> str:
    """The text of the post a request asks about (its last user message)."""
    content = request["messages"][-1]["content"]
    if isinstance(content, list):
        content = next(part["text"] for part in content if part["type"] == "text")
    return content.split("\n")[0].removeprefix("Post: ")


def entities(*pairs) -> str:
    """An answer naming these (text, type) pairs, in the JSON the extractor asks for."""
    return json.dumps({"entities": [{"text": t, "type": k} for t, k in pairs]})


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
