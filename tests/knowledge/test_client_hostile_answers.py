"""The `openai_compatible` client against endpoints that echo the API key into
what it reports (errors, answers, model ids), and that redirect with a body
meant to exhaust memory. Servers on 127.0.0.1 only (fake_llm and serve_once)."""
import json
import logging
import tracemalloc
import zlib

import pytest
import spacy
from spacy.tokens import DocBin
from typer.testing import CliRunner

from fake_llm import KEY_ENV, MODEL, FakeLLM, Reply, post_text
from test_llm_knowledge import llm_nlp, no_hang, serve_once  # noqa: F401  (no_hang: autouse)

from spacy_ita.cli import app
from spacy_ita.context import make_doc
from spacy_ita.knowledge.client import bounded_http_client

# Mixed case and digits: none of its 4-character pieces occurs in other text of a run.
SECRET = "sk-Qz7Rw2Lp9Vb4Nc8Xt3Mk6Hy1Gd5Jf0Sa"
# Where the key starts in what the server sends: every 17 characters, so that
# some post has it across any cut (at 80, 200 or 300 characters) of a message.
PADS = range(0, 320, 17)


@pytest.fixture(autouse=True)
def secret_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def key_pieces(text: str) -> list:
    """The 4-character pieces of the key that `text` holds."""
    return [SECRET[i:i + 4] for i in range(len(SECRET) - 3) if SECRET[i:i + 4] in text]


def echoing(request: dict) -> Reply:
    """Answers that quote the Authorization header after `pad` characters: a 400
    error, an answer that is not JSON, and an entity without a text."""
    kind, pad = post_text(request).split()
    echo = "x" * int(pad) + f" Bearer {SECRET}"
    if kind == "error":
        return Reply(echo, 400)
    if kind == "prose":
        return Reply("{" + echo)
    return Reply(json.dumps({"entities": [{"type": "PER", "note": echo}]}))


def test_no_piece_of_an_echoed_key_reaches_a_doc_the_output_or_the_console(tmp_path, caplog):
    """An error or answer that echoes the key is masked before it is cut, wherever
    the key falls: no 4 characters of it reach Doc._.knowledge_error, the file or the logs."""
    caplog.set_level(logging.DEBUG)
    texts = [f"{kind} {pad}" for kind in ("error", "prose", "entity") for pad in PADS]
    source = tmp_path / "posts.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    with FakeLLM(echoing) as server:
        result = CliRunner().invoke(app, [
            "extract", str(source), str(tmp_path / "out.spacy"), "--ocr", "none", "--no-tags",
            "--knowledge-endpoint", server.url, "--knowledge-model", MODEL,
            "--knowledge-key-env", KEY_ENV])
    assert result.exit_code == 0, result.output
    docs = list(DocBin().from_disk(tmp_path / "out.spacy").get_docs(spacy.blank("en").vocab))
    errors = {doc.text: doc._.knowledge_error for doc in docs}
    assert sorted(errors) == sorted(texts) and all(errors.values())
    assert {text: key_pieces(error) for text, error in errors.items() if key_pieces(error)} == {}
    for kind in ("error", "prose", "entity"):  # the key seen and masked, not cut off before it
        assert "Bearer ***" in errors[f"{kind} 0"]
    assert "HTTP 400" in errors["error 0"] and "invalid JSON" in errors["prose 0"]
    assert "entity without a text" in errors["entity 0"]
    assert "got no knowledge" in result.output
    assert key_pieces(result.output + caplog.text) == []


def test_model_ids_that_echo_the_key_are_masked_in_the_setup_error():
    with FakeLLM(echoing, models=["other-model", f"proxy saw Bearer {SECRET}"]) as server:
        nlp = llm_nlp(server)
        with pytest.raises(RuntimeError, match="does not serve model 'test-model'; it serves: "
                                               r"other-model, proxy saw Bearer \*\*\*") as caught:
            nlp(make_doc(nlp, "a post"))
    assert key_pieces(str(caught.value)) == []


def test_an_error_on_several_lines_is_one_line(tmp_path):
    """A server's error message with line breaks (an HTML page, a stack trace)
    spread over several lines of Doc._.knowledge_error and the printed list."""
    page = "<html>\n<body>\n  upstream\r\n  failed\n</body>\n</html>"
    with FakeLLM(lambda request: Reply(page, 400)) as server:
        doc = llm_nlp(server)(make_doc(spacy.blank("en"), "a post"))
    assert "<html> <body> upstream failed </body> </html>" in doc._.knowledge_error
    assert not any(character in doc._.knowledge_error for character in "\r\n")


def gzip_bomb(mebibytes: int) -> bytes:
    """A gzip body that decodes to `mebibytes` MiB of spaces."""
    gzip = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(gzip.compress(b" " * (1 << 20)) for _ in range(mebibytes)) + gzip.flush()


@pytest.mark.parametrize("encoding,body", [(b"gzip", gzip_bomb(64)),
                                           (b"identity", b" " * (30 << 20))],
                         ids=["gzip-64MiB", "plain-30MiB"])
def test_a_redirect_is_followed_without_reading_its_body(encoding, body):
    """A 307's body, which httpx would read and decode whole before following
    it, is never read: only its Location counts, and the answer it leads to
    comes through while nothing near the body's size is ever in memory."""
    answer = b'{"ok": true}'
    final = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(answer), answer)
    with serve_once(final) as final_url:
        redirect = (b"HTTP/1.1 307 Temporary Redirect\r\nLocation: %s\r\nContent-Encoding: %s\r\n"
                    b"Content-Length: %d\r\n\r\n" % (final_url.encode(), encoding, len(body)))
        with serve_once(redirect + body) as url:
            client = bounded_http_client(5.0, 1 << 20)
            tracemalloc.start()
            try:
                response = client.post(url, content=b"{}")
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    assert response.json() == {"ok": True}
    assert [r.status_code for r in response.history] == [307]
    assert peak < 16 << 20, f"{peak:,} bytes in memory at the peak"
