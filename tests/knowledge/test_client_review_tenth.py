"""The `openai_compatible` client against a key that no HTTP header carries, an
endpoint that echoes the key inside a valid answer, and 200 answers that are not
what the API answers (an HTML page, cut JSON, a list without choices), for the
model list and for a chat completion. Servers on 127.0.0.1 only."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fake_llm import KEY, KEY_ENV, MODEL, FakeLLM, Reply, entities
from test_llm_knowledge import api_key, llm_nlp, no_hang  # noqa: F401  (autouse fixtures)

from spacy_ita.context import make_doc
from spacy_ita.context.registry import SetupError
from spacy_ita.knowledge.client import make_openai_compatible

PREFIX = "spacy-ita.openai_compatible.v1 failed: "
MODEL_LIST = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
# 200 answers of another shape than the API's, with their content type; the
# HTML page echoes the key, which no message may quote.
NOT_THE_API = {
    "html": ("text/html", f"<html><body>Gateway error (Bearer {KEY})</body></html>"),
    "event-stream": ("text/event-stream", 'data: {"choices": []}\n\n'),
    "cut-json": ("application/json", '{"data": [{"id": "te'),
    "deep-json": ("application/json", "[" * 100_000 + "]" * 100_000),
    "null": ("application/json", "null"),
}


class RawServer:
    """A server on 127.0.0.1 that answers GET /v1/models with `models` and every
    POST with `chat`, each a (content type, body) pair sent with status 200,
    counting the POSTs."""

    def __init__(self, models=("application/json", MODEL_LIST), chat=None):
        server = self
        self.posts = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, content_type: str, body: str):
                data = body.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer(*models)

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                server.posts += 1
                self.answer(*chat)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "RawServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def key_pieces(text: str, key: str = KEY) -> list:
    """The 4-character pieces of `key` that `text` holds."""
    return [key[i:i + 4] for i in range(len(key) - 3) if key[i:i + 4] in text]


def model_client(base_url: str):
    return make_openai_compatible(model=MODEL, base_url=base_url, api_key_env=KEY_ENV,
                                  timeout=5.0, max_retries=0)


@pytest.mark.parametrize("key", ["sk-Qz7Rw2Lp9Vb4\nsk-Nc8Xt3Mk6Hy1", "sk-Qz7Rw2Lp9Vb4\tNc8Xt3",
                                 "sk-Qz7Rw2Lp9Vb4 Nc8Xt3", "sk-Qz7Rw2Lp9Vb4\u00e9Nc8Xt3"],
                         ids=["line-break", "tab", "space", "non-ascii"])
def test_a_key_that_no_http_header_carries_is_refused_naming_its_variable(monkeypatch, key):
    """A key file of two lines read with $(cat ...) keeps its inner line break;
    the HTTP library refuses such a header, quoting it whole in a connection
    error that blamed the server. It is refused first, by the variable's name."""
    monkeypatch.setenv(KEY_ENV, key)
    with FakeLLM(lambda request: Reply()) as server:
        with pytest.raises(SetupError, match=f"environment variable {KEY_ENV} .*printable "
                                             "ASCII") as caught:
            model_client(server.url).preflight()
    message = str(caught.value)
    assert key_pieces(message, key) == [] and "\n" not in message


def test_scrub_masks_the_key_as_repr_and_json_quote_it(monkeypatch):
    """An HTTP library quotes a header it refuses with repr() (h11: b'Bearer
    sk-..\\nsk-..'), a JSON error escapes it: each form is masked, not only the
    key as it is."""
    key = "sk-Qz7Rw2Lp9Vb4\nsk-Nc8Xt3Mk6Hy1\u00e9"
    monkeypatch.setenv(KEY_ENV, key)
    client = model_client("http://127.0.0.1:1/v1")
    quoted = [repr(f"Bearer {key}".encode()), repr(key), json.dumps({"auth": key}), key]
    for text in quoted:
        assert client.scrub(f"Illegal header value {text}").count("***") == 1, text
        assert key_pieces(client.scrub(text), key) == [], text
        assert client.echoes_key(text)


@pytest.mark.parametrize("answer", [
    entities((f"Bearer {KEY}", "PER")),
    # JSON may escape any character: the answer's text does not show the key, its knowledge does
    '{"entities": [{"text": "%s", "type": "PER"}]}' % "".join(f"\\u{ord(c):04x}" for c in KEY),
], ids=["as-is", "json-escaped"])
def test_an_answer_that_repeats_the_key_is_neither_knowledge_nor_cached(tmp_path, answer):
    """An endpoint or proxy that echoes the Authorization header inside a valid
    answer would put the key in the knowledge, the cache and every output; the
    answer is dropped instead, with a reason that does not quote it, and asked
    again on a rerun like any other unusable answer."""
    cache = tmp_path / "cache.sqlite"
    with FakeLLM(lambda request: Reply(answer)) as server:
        for _ in range(2):
            nlp = llm_nlp(server, cache_path=cache)  # a run: its own client and check
            doc = nlp(make_doc(nlp, "Obama in Paris"))
            assert doc._.visual_context.knowledge == []
            assert doc._.knowledge_error == PREFIX + (
                "the answer repeats the API key (an endpoint or proxy that echoes the "
                "Authorization header?); it is not used")
            assert doc._.context_retryable is False
        assert len(server.requests) == 2  # nothing cached
    assert KEY.encode() not in cache.read_bytes()


@pytest.mark.parametrize("answer", [
    *NOT_THE_API.values(),
    ("application/json", '{"data": null}'),
    ("application/json", '{"data": [1]}'),
    ("application/json", '{"data": [{}]}'),
], ids=[*NOT_THE_API, "data-null", "data-of-numbers", "model-without-id"])
def test_a_models_answer_that_is_no_model_list_is_a_one_line_setup_error(answer):
    """A web app or proxy that answers GET /models with 200 and something else
    ended extract, apply and serve with an AttributeError's or a JSON error's
    traceback; it is the setup error naming the endpoint, key-free."""
    with RawServer(models=answer) as server:
        with pytest.raises(SetupError) as caught:
            model_client(server.url).preflight()
    message = str(caught.value)
    assert message.startswith(f"spacy-ita.openai_compatible.v1: {server.url}/models did not "
                              f"answer an OpenAI model list ({answer[0]}): '")
    assert "\n" not in message and len(message) < 300 and key_pieces(message) == []


@pytest.mark.parametrize("answer", [
    *NOT_THE_API.values(),
    ("application/json", '{"choices": []}'),
    ("application/json", '{"choices": [{"message": null, "finish_reason": "stop"}]}'),
], ids=[*NOT_THE_API, "no-choices", "null-message"])
def test_a_chat_answer_that_is_no_chat_completion_may_pass_and_is_asked_again(tmp_path, answer):
    """A gateway's error page with status 200 gave the post an AttributeError or
    IndexError as a final error; it says what came instead, is retryable, and
    nothing is cached, so a rerun asks again."""
    cache = tmp_path / "cache.sqlite"
    with RawServer(chat=answer) as server:
        for _ in range(2):
            nlp = llm_nlp(server, cache_path=cache)  # a run: its own client and check
            doc = nlp(make_doc(nlp, "Obama in Paris"))
            assert doc._.knowledge_error.startswith(
                f"{PREFIX}the answer is not a chat completion ({answer[0]}): '")
            assert doc._.context_retryable is True and doc._.visual_context.knowledge == []
            assert len(doc._.knowledge_error) < 300 and key_pieces(doc._.knowledge_error) == []
        assert server.posts == 2
