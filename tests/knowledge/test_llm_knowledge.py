"""`ita_knowledge` (a `mentions_task` asking an `openai_compatible` model)
against a real OpenAI-compatible HTTP server on 127.0.0.1, through the real
`openai` client: prompts and images received, concurrency, retries, timeouts,
bad answers, the cache, the call cap, failing fast, the API key kept out of
every file and log, existing knowledge, and a 200-post batch with failing
calls. No network is needed."""
import base64
import faulthandler
import io
import json
import logging
import pickle
import socket
import threading
import time
import tracemalloc
import warnings
import zlib
from contextlib import contextmanager
from typing import Dict

import pytest
import spacy
from PIL import Image
from spacy.tokens import Doc, DocBin, Span
from typer.testing import CliRunner

from fake_llm import KEY, KEY_ENV, MODEL, FakeLLM, Reply, entities, free_port, post_text

import spacy_ita  # noqa: F401  (Doc extensions)
from spacy_ita.cli import app
from spacy_ita.cli.extract import extract_contexts
from spacy_ita.context import component as _component  # noqa: F401  (the ita_context factory)
from spacy_ita.context import make_doc, pipe_posts
from spacy_ita.context.registry import Extractor, SetupError, extractors
from spacy_ita.knowledge.client import AnswerRefused, bounded_http_client
from spacy_ita.knowledge.legacy import TASK_SETTINGS
from spacy_ita.knowledge.task import AnswerError, parse_answer
from spacy_ita.knowledge.mentions import Mention, parse_mentions

HANG_SECONDS = 120  # far above any test here, even on a busy 2-core machine


def first_word_is_a_person(request: dict) -> Reply:
    return Reply(entities((post_text(request).split()[0], "per")))


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture(autouse=True)
def no_hang():
    """End the test run, with every thread's traceback, if a test hangs."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def knowledge_config(base_url: str, *, batch_size: int = 16, cache_path=None,
                     on_error="ignore", existing_knowledge="keep", **settings) -> dict:
    """The ita_knowledge config asking `base_url`, with short timeouts and
    backoff so that no test waits long; `settings` go to the task or the model."""
    model = {"@misc": "spacy-ita.openai_compatible.v1", "base_url": base_url, "model": MODEL,
             "api_key_env": KEY_ENV, "backoff": 0.01, "timeout": 5.0}
    task = {"@misc": "spacy-ita.mentions_task.v1"}
    for name, value in settings.items():
        (task if name in TASK_SETTINGS else model)[name] = value
    return {"task": task, "model": model, "on_error": on_error, "batch_size": batch_size,
            "existing_knowledge": existing_knowledge,
            "cache_path": None if cache_path is None else str(cache_path)}


def llm_nlp(server: FakeLLM, *, captions=None, **settings) -> spacy.language.Language:
    """A blank pipeline that asks the server for knowledge (ita_knowledge),
    after an ita_context that looks captions up when `captions` is given."""
    nlp = spacy.blank("en")
    if captions is not None:
        nlp.add_pipe("ita_context", config={"object_tags": None, "ocr_text": None,
                                            "captions": captions})
    base_url = settings.pop("base_url", server.url)
    nlp.add_pipe("ita_knowledge", config=knowledge_config(base_url, **settings))
    return nlp


def run_posts(nlp, texts, images=None):
    return list(pipe_posts(nlp, zip(texts, images or [None] * len(texts)), batch_size=1000))


def test_the_prompt_has_labels_post_and_image_context_and_the_answer_is_compact(tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("7.jpg :a basketball player dunking\n")

    def reply(request):
        return Reply(entities(("Kawhi Leonard", "per"), ("Toronto", "LOC"),
                              ("Kawhi Leonard", "PER")))

    with FakeLLM(reply) as server:
        nlp = llm_nlp(server, captions={"@spacy_ita_extractors": "spacy-ita.precomputed.v1",
                                        "path": str(captions)})
        doc = nlp(make_doc(nlp, "Kawhi Leonard wins it for Toronto", None, image_id="7"))
    assert doc._.visual_context.knowledge == ["Kawhi Leonard (PER) ; Toronto (LOC)"]
    assert doc._.visual_context.captions == ["a basketball player dunking"]
    assert parse_mentions(doc._.visual_context.knowledge[0]) == [
        Mention("Kawhi Leonard", "per"), Mention("Toronto", "loc")]
    (request,) = server.requests
    assert request["model"] == MODEL and request["temperature"] == 0.0
    assert request["response_format"] == {"type": "json_object"}
    system, user = request["messages"]
    assert system["role"] == "system" and '{"entities": [' in system["content"]
    assert "- PER: a person" in system["content"] and "- OTHER: another named" in system["content"]
    assert user == {"role": "user", "content": "Post: Kawhi Leonard wins it for Toronto\n"
                                               "Image caption: a basketball player dunking"}
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"


def test_send_image_sends_a_data_url_and_text_only_posts_stay_text(tmp_path):
    with FakeLLM(first_word_is_a_person) as server:
        nlp = llm_nlp(server, send_image=True, labels={"PER": "someone", "TEAM": ""})
        image = Image.new("RGB", (40, 30), (200, 30, 30))
        docs = run_posts(nlp, ["Red square", "No image"], [image, None])
    assert [doc._.visual_context.knowledge for doc in docs] == [["Red (PER)"], ["No (PER)"]]
    with_image, text_only = sorted(server.requests, key=post_text, reverse=True)
    text_part, image_part = with_image["messages"][-1]["content"]
    assert text_part == {"type": "text", "text": "Post: Red square"}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    received = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert received.size == (40, 30)
    assert received.convert("RGB").getpixel((20, 15))[0] > 150
    assert text_only["messages"][-1]["content"] == "Post: No image"
    assert "- PER: someone\n- TEAM\n" in with_image["messages"][0]["content"]


def test_an_answer_cached_for_an_image_needs_no_call_and_no_decoding(tmp_path, monkeypatch):
    """The cache key holds the image's hash, so a second run asks nothing and
    decodes no image; an image that cannot be decoded is asked as text."""
    from spacy_ita.knowledge import component as knowledge_component

    cache = tmp_path / "cache.sqlite"
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    with FakeLLM(first_word_is_a_person) as server:
        first = run_posts(llm_nlp(server, send_image=True, cache_path=cache), ["Red square"], [image])
        decoded = []
        real_decode = knowledge_component.decode_image
        monkeypatch.setattr(knowledge_component, "decode_image",
                            lambda *args: decoded.append(1) or real_decode(*args))
        again = run_posts(llm_nlp(server, send_image=True, cache_path=cache), ["Red square"], [image])
        broken = run_posts(llm_nlp(server, send_image=True, cache_path=cache), ["Red square"],
                           [b"not an image"])
    assert again[0]._.visual_context.knowledge == first[0]._.visual_context.knowledge == ["Red (PER)"]
    assert len(server.requests) == 2 and decoded == [1]
    assert isinstance(server.requests[1]["messages"][-1]["content"], str)  # asked as text
    assert broken[0]._.image_error is not None


def test_few_shot_examples_come_from_a_training_file(tmp_path):
    vocab = spacy.blank("en").vocab
    docs = []
    for words, spans in [("nothing here".split(), []),
                         ("RT @Obama in Paris".split(), [(1, 2, "PER"), (3, 4, "LOC")]),
                         ("Go Mets".split(), [(1, 2, "ORG")]),
                         ("Obama again".split(), [(0, 1, "PER")])]:
        doc = Doc(vocab, words=words, spaces=[True] * (len(words) - 1) + [False])
        doc.set_ents([Span(doc, s, e, label=label) for s, e, label in spans], default="outside")
        docs.append(doc)
    docs[2]._.visual_context = spacy_ita.VisualContext(captions=["a baseball game"])
    DocBin(store_user_data=True, docs=docs).to_disk(tmp_path / "train.spacy")
    with FakeLLM(first_word_is_a_person) as server:
        nlp = llm_nlp(server, examples_path=str(tmp_path / "train.spacy"), n_examples=2)
        nlp(make_doc(nlp, "Messi scores"))
    messages = server.requests[0]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant",
                                             "user"]
    assert messages[1]["content"] == "Post: RT @Obama in Paris"
    assert json.loads(messages[2]["content"]) == {"entities": [
        {"text": "@Obama", "type": "PER"}, {"text": "Paris", "type": "LOC"}]}
    assert messages[3]["content"] == "Post: Go Mets\nImage caption: a baseball game"
    assert json.loads(messages[4]["content"]) == {"entities": [{"text": "Mets", "type": "ORG"}]}


@pytest.mark.parametrize("answer,expected", [
    ('```json\n{"entities": [{"text": "NBA", "type": "org"}]}\n```', [Mention("NBA", "ORG")]),
    ('Sure! Here they are: {"entities": [{"name": "Paris", "label": "LOC"}]} Hope it helps.',
     [Mention("Paris", "LOC")]),
    ('[["Kobe", "PER"], {"entity": "LA (city)", "category": "loc"}]',
     [Mention("Kobe", "PER"), Mention("LA city", "LOC")]),
    ('{"entities": ["Kobe (PER)", "Staples Center (LOC)"]}',
     [Mention("Kobe", "per"), Mention("Staples Center", "loc")]),
    ("Named entities: 1. Kawhi (person) 2. NBA (organization) Reasoning: ...",
     [Mention("Kawhi", "person"), Mention("NBA", "organization")]),
    ('{"entities": []}', []),
])
def test_answers_in_many_shapes(answer, expected):
    labels = ["PER", "LOC", "ORG", "OTHER"]
    if expected and expected[0].type in ("per", "person"):
        labels = []
    assert parse_answer(answer, labels) == expected


@pytest.mark.parametrize("answer,message", [
    ("{not json", "invalid JSON"),
    ('{"names": ["x"]}', "expected {\"entities\": [...]}"),
    ('{"entities": [{"type": "PER"}]}', "entity without a text"),
    ('{"entities": "Kobe"}', "expected a list of entities"),
])
def test_malformed_json_is_an_answer_error(answer, message):
    with pytest.raises(AnswerError, match=message.replace("[", r"\[").replace("{", r"\{")):
        parse_answer(answer)


def test_bad_answers_fail_their_post_with_a_reason_and_spare_the_others():
    answers = {"good": Reply(entities(("good", "PER"))), "broken": Reply("{not json"),
               "huge": Reply(entities(*[(f"name{i}", "PER") for i in range(400)])),
               "empty": Reply(""), "cut": Reply('{"entities": [{"te', finish_reason="length"),
               "wrong": Reply('{"names": []}')}
    with FakeLLM(lambda request: answers[post_text(request)]) as server:
        docs = run_posts(llm_nlp(server, max_answer_chars=2000), list(answers))
    errors = {doc.text: doc._.knowledge_error for doc in docs}
    assert docs[0]._.visual_context.knowledge == ["good (PER)"] and errors["good"] is None
    prefix = "spacy-ita.openai_compatible.v1 failed: "
    assert errors["broken"].startswith(prefix + "malformed answer: invalid JSON")
    assert errors["huge"].startswith(prefix + "answer of ")
    assert "characters is over max_answer_chars (2000)" in errors["huge"]
    assert errors["empty"] == prefix + "empty answer"
    assert errors["cut"].startswith(prefix + "malformed answer (cut at max_tokens)")
    assert "expected {\"entities\": [...]}" in errors["wrong"]
    assert all(doc._.visual_context.knowledge == [] for doc in docs[1:])


def test_retries_after_429_and_500_then_gives_up_with_the_reason():
    seen: Dict[str, int] = {}
    script = {"flaky": [Reply("slow down", 429, headers={"Retry-After": "0"}),
                        Reply("oops", 500), Reply(entities(("flaky", "PER")))],
              "down": [Reply("bad gateway", 502)] * 9,
              "refused": [Reply("bad request", 400)] * 9}

    def reply(request):
        post = post_text(request)
        seen[post] = seen.get(post, 0) + 1
        return script[post][seen[post] - 1]

    with FakeLLM(reply) as server:
        docs = run_posts(llm_nlp(server, max_retries=2, json_mode=False), list(script))
    assert docs[0]._.visual_context.knowledge == ["flaky (PER)"]
    assert seen == {"flaky": 3, "down": 3, "refused": 1}  # a 400 is not retried
    assert "HTTP 502" in docs[1]._.knowledge_error and "bad gateway" in docs[1]._.knowledge_error
    assert "HTTP 400" in docs[2]._.knowledge_error


def test_a_slow_server_times_out_and_the_post_fails_alone():
    def reply(request):
        return Reply(entities(("x", "PER")), delay=5.0 if post_text(request) == "slow" else 0)

    with FakeLLM(reply) as server:
        start = time.perf_counter()
        docs = run_posts(llm_nlp(server, timeout=0.5, max_retries=1), ["slow", "fast"])
        elapsed = time.perf_counter() - start
        assert len([r for r in server.requests if post_text(r) == "slow"]) == 2
    assert docs[0]._.knowledge_error.endswith("timed out after 0.5s")
    assert docs[1]._.visual_context.knowledge == ["x (PER)"]
    assert elapsed < 4


@pytest.mark.parametrize("drip", [
    Reply(entities(("a" * 40, "PER")), drip=0.05),
    Reply(entities(("a" * 40, "PER")), drip=0.9),
    Reply(entities(("a" * 40, "PER")), header_drip=0.2),
], ids=["body_bytes", "slow_body_bytes", "header_bytes"])
def test_a_dripping_answer_stops_at_the_timeout_of_the_whole_call(drip):
    """A byte every 50 ms, or 0.9 s, of the body, or every 0.2 s of the
    headers, keeps every read under the timeout: only a deadline for the whole
    answer, headers included, stops it (the whole answer would take 8 s or more)."""
    def reply(request):
        return drip if post_text(request) == "drip" else first_word_is_a_person(request)

    with FakeLLM(reply) as server:
        nlp = llm_nlp(server, timeout=1.0, max_retries=0)
        (fast,) = run_posts(nlp, ["fast"])  # the client is made and checked once
        start = time.perf_counter()
        (drip,) = run_posts(nlp, ["drip"])
        elapsed = time.perf_counter() - start
    assert drip._.knowledge_error.endswith("timed out after 1s")
    assert drip._.context_retryable is True
    assert fast._.visual_context.knowledge == ["fast (PER)"]
    assert not fast._.context_retryable
    assert 0.9 < elapsed < 1.6


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "undeclared"])
def test_a_huge_answer_is_refused_without_reading_it_all(content_length):
    huge = Reply("x" * (30 << 20), content_length=content_length)
    with FakeLLM(lambda request: huge) as server:
        docs = run_posts(llm_nlp(server, max_retries=2, max_answer_bytes=1 << 20), ["big"])
        time.sleep(0.2)  # let the server notice that the client is gone
        assert server.bytes_sent < 8 << 20
        assert len(server.requests) == 1  # not asked again: the answer would be the same
    assert docs[0]._.knowledge_error.endswith(
        "answer refused: over max_answer_bytes (1,048,576 bytes)")
    assert docs[0]._.context_retryable is False


@contextmanager
def serve_once(answer: bytes):
    """The URL of a server on 127.0.0.1 that answers one request with `answer`
    (raw bytes: status line, headers and body) and holds the connection open."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve():
        connection, _ = listener.accept()
        with connection:
            connection.recv(1 << 16)
            try:
                connection.sendall(answer)
            except OSError:  # the client gave up
                pass
            done.wait(HANG_SECONDS)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1/chat/completions"
    finally:
        done.set()
        thread.join()
        listener.close()


def test_a_compressed_answer_is_refused_before_it_is_decoded():
    """The byte cap counts the bytes received: a server that gzips its answer
    although asked not to sends 64 KB that decode to 64 MiB. Such an answer is
    refused unread: nothing near that size is ever in memory."""
    gzip = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = b"".join(gzip.compress(b" " * (1 << 20)) for _ in range(64)) + gzip.flush()
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body))
    with serve_once(head + body) as url:
        client = bounded_http_client(5.0, 1 << 20)
        tracemalloc.start()
        start = time.perf_counter()
        try:
            with pytest.raises(AnswerRefused, match=r"compressed \(Content-Encoding: gzip\)"):
                client.post(url, content=b"{}")
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 16 << 20, f"{peak:,} bytes in memory at the peak"
    assert elapsed < 2


def test_failures_that_may_pass_are_marked_retryable_and_the_others_not():
    answers = {"down": Reply("overloaded", 503), "refused": Reply("bad request", 400),
               "broken": Reply("{not json"), "late": Reply(entities(("x", "PER")), delay=30),
               "good": Reply(entities(("good", "PER")))}
    # A timeout that the prompt answers meet on a loaded machine (0.5 s did not,
    # beside a training run); the late answer never comes before the server stops.
    with FakeLLM(lambda request: answers[post_text(request)]) as server:
        docs = run_posts(llm_nlp(server, timeout=2.0, max_retries=0, json_mode=False),
                         list(answers))
    assert {doc.text: doc._.context_retryable for doc in docs} == {
        "down": True, "refused": False, "broken": False, "late": True, "good": False}
    assert docs[-1]._.knowledge_error is None


@pytest.mark.parametrize("concurrency", [1, 4])
def test_at_most_max_concurrency_requests_are_in_flight(concurrency):
    def reply(request):
        return Reply(entities(("x", "PER")), delay=0.1)

    with FakeLLM(reply) as server:
        texts = [f"p{i}" for i in range(12)]
        docs = run_posts(llm_nlp(server, max_concurrency=concurrency), texts)
    assert server.max_in_flight == concurrency
    assert [doc.text for doc in docs] == texts


def test_the_cache_answers_a_rerun_without_a_call(tmp_path):
    cache = tmp_path / "contexts.sqlite"
    texts = ["Kobe wins", "Paris burns", "fail please"]

    def reply(request):
        if post_text(request) == "fail please":
            return Reply("down", 503)
        return first_word_is_a_person(request)

    with FakeLLM(reply) as server:
        first = run_posts(llm_nlp(server, cache_path=cache, max_retries=0), texts)
        assert len(server.requests) == 3
        again = run_posts(llm_nlp(server, cache_path=cache, max_retries=0), texts)
        assert len(server.requests) == 4  # only the failed post asks again
        assert [d._.visual_context.knowledge for d in again] == \
            [d._.visual_context.knowledge for d in first] == [["Kobe (PER)"], ["Paris (PER)"], []]
        other_prompt = llm_nlp(server, cache_path=cache, prompt="Tweet: {text}")
        run_posts(other_prompt, texts[:1])
        assert len(server.requests) == 5  # another prompt is another cache key


def test_max_calls_caps_a_run():
    with FakeLLM(first_word_is_a_person) as server:
        docs = run_posts(llm_nlp(server, max_calls=3, max_concurrency=1),
                         [f"post {i}" for i in range(5)])
    assert len(server.requests) == 3
    assert [doc._.visual_context.knowledge for doc in docs[:3]] == [["post (PER)"]] * 3
    for doc in docs[3:]:
        assert doc._.knowledge_error.endswith("max_calls (3) reached: no more calls in this run")


def test_json_mode_is_dropped_when_the_server_refuses_it(caplog):
    def reply(request):
        if "response_format" in request:
            return Reply("response_format is not supported", 400)
        return first_word_is_a_person(request)

    with FakeLLM(reply) as server:
        docs = run_posts(llm_nlp(server, max_concurrency=1), ["one", "two", "three"])
    assert [doc._.visual_context.knowledge for doc in docs] == [["one (PER)"], ["two (PER)"],
                                                                 ["three (PER)"]]
    assert ["response_format" in r for r in server.requests] == [True, False, False, False]
    assert "refused response_format" in caplog.text


def test_setup_errors_fail_before_any_post_is_sent(monkeypatch):
    with FakeLLM(first_word_is_a_person, models=["other-model", "llama3:latest"]) as server:
        nlp = llm_nlp(server)
        with pytest.raises(RuntimeError, match="does not serve model 'test-model'; it serves: "
                                               "llama3:latest, other-model"):
            nlp(make_doc(nlp, "a post"))
        ollama_style = llm_nlp(server, model="llama3")  # Ollama's default tag
        assert ollama_style(make_doc(nlp, "Kobe"))._.visual_context.knowledge == ["Kobe (PER)"]
        without_v1 = llm_nlp(server, base_url=server.url.removesuffix("/v1"))
        with pytest.raises(RuntimeError, match="answered 404: no OpenAI-compatible API there"):
            without_v1(make_doc(nlp, "a post"))
        monkeypatch.delenv(KEY_ENV)
        with pytest.raises(RuntimeError, match=f"environment variable {KEY_ENV} .* is not set"):
            llm_nlp(server)(make_doc(nlp, "a post"))
        assert len(server.requests) == 1
    nowhere = llm_nlp(server, api_key_env=None, base_url=f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(RuntimeError, match="cannot be reached .*is the server running"):
        list(nowhere.pipe([make_doc(nlp, "a post")]))
    with pytest.raises(ValueError, match="base_url must start with http"):
        spacy.blank("en").add_pipe("ita_knowledge", config=knowledge_config("localhost:8000"))
    with pytest.raises(ValueError, match=r"base_url must not hold credentials \(user:key@host\)"):
        spacy.blank("en").add_pipe("ita_knowledge",
                                   config=knowledge_config("https://me:sk-123@llm.example/v1"))
    with pytest.raises(ValueError, match=r"unknown placeholder \{post\}"):
        llm_nlp(server, prompt="Post: {post}")


class CountingTags(Extractor):
    """An object-tag extractor that counts the posts it is given."""

    name = "spacy-ita-test.counting_tags.v1"
    needs_pixels = False
    posts = 0

    def settings(self):
        return {}

    def __call__(self, records):
        CountingTags.posts += len(records)
        return [{"object_tags": ["thing"]} for _ in records]


extractors.register(CountingTags.name, func=CountingTags)


def test_a_wrong_url_fails_extract_before_the_image_slots_run(tmp_path):
    """`extract` checks every component's setup first: a wrong URL fails before
    minutes of image work, not after the first batch of images."""
    nowhere = f"http://127.0.0.1:{free_port()}/v1"
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_context", config={
        "object_tags": {"@spacy_ita_extractors": CountingTags.name}, "ocr_text": None})
    nlp.add_pipe("ita_knowledge", config=knowledge_config(nowhere))
    source = tmp_path / "posts.jsonl"
    source.write_text(json.dumps({"text": "a post", "image_id": "1"}) + "\n")
    CountingTags.posts = 0
    with pytest.raises(SetupError, match="cannot be reached"):
        extract_contexts(nlp, source, tmp_path / "out.spacy", progress=False)
    assert CountingTags.posts == 0 and not (tmp_path / "out.spacy").exists()


def test_the_key_is_never_written_anywhere(tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "contexts.sqlite"

    def reply(request):
        if post_text(request) == "leak":  # a server that echoes the key in its error
            return Reply(f"Incorrect API key provided: {KEY}", 500)
        return first_word_is_a_person(request)

    with FakeLLM(reply) as server:
        nlp = llm_nlp(server, cache_path=cache, max_retries=1, on_error="warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            docs = run_posts(nlp, ["Kobe wins", "leak"])
        assert docs[0]._.visual_context.knowledge == ["Kobe (PER)"]
        assert "Incorrect API key provided: ***" in docs[1]._.knowledge_error
        assert any("ita_knowledge: no knowledge for doc 'leak'" in str(w.message)
                   for w in caught)
        assert all(KEY not in str(w.message) for w in caught)
        nlp.to_disk(tmp_path / "pipeline")
        DocBin(store_user_data=True, docs=docs).to_disk(tmp_path / "docs.spacy")
        (tmp_path / "model.pickle").write_bytes(pickle.dumps(nlp.get_pipe("ita_knowledge")))
        reloaded = spacy.load(tmp_path / "pipeline")
        assert reloaded(make_doc(reloaded, "Paris"))._.visual_context.knowledge == ["Paris (PER)"]
        with pytest.raises(ValueError, match="NAME of the environment variable") as excinfo:
            llm_nlp(server, api_key_env=KEY)
        assert KEY not in str(excinfo.value)
    config = (tmp_path / "pipeline" / "config.cfg").read_text()
    assert f'api_key_env = "{KEY_ENV}"' in config
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {"config.cfg", "meta.json", "contexts.sqlite", "docs.spacy"} <= {p.name for p in files}
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    output = capsys.readouterr()
    assert KEY not in caplog.text + output.out + output.err
    assert "retry 1 of 1" in caplog.text  # the logs were captured


def test_200_posts_with_a_fifth_of_the_calls_failing_or_timing_out_lose_no_post():
    def reply(request):
        n = int(post_text(request).split()[1])
        if n % 10 == 3:
            return Reply("overloaded", 503)
        if n % 10 == 7:
            return Reply(entities(("late", "PER")), delay=3.0)
        return first_word_is_a_person(request)

    texts = [f"post {n}" for n in range(200)]
    with FakeLLM(reply) as server:
        start = time.perf_counter()
        docs = run_posts(llm_nlp(server, timeout=0.5, max_retries=1, max_concurrency=16,
                                 batch_size=50), texts)
        elapsed = time.perf_counter() - start
    assert [doc.text for doc in docs] == texts
    failed = [doc for doc in docs if doc._.knowledge_error is not None]
    assert [doc.text for doc in failed] == [t for n, t in enumerate(texts) if n % 10 in (3, 7)]
    assert all(doc._.visual_context.knowledge == [] for doc in failed)
    assert sum("HTTP 503" in doc._.knowledge_error for doc in failed) == 20
    assert sum("timed out" in doc._.knowledge_error for doc in failed) == 20
    assert all(doc._.visual_context.knowledge == ["post (PER)"]
               for doc in docs if doc._.knowledge_error is None)
    assert len(server.requests) == 160 + 40 * 2
    assert elapsed < 20


def test_extract_cli_adds_knowledge_from_an_endpoint(tmp_path):
    Image.new("RGB", (16, 16), "green").save(tmp_path / "g.png")
    records = [{"text": "Kobe at Staples", "image": "g.png"}, {"text": "fail now"}]
    source = tmp_path / "posts.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")

    def reply(request):
        return Reply("no", 400) if post_text(request) == "fail now" else \
            first_word_is_a_person(request)

    with FakeLLM(reply) as server:
        result = CliRunner().invoke(app, [
            "extract", str(source), str(tmp_path / "out.spacy"), "--ocr", "none", "--no-tags",
            "--knowledge-endpoint", server.url, "--knowledge-model", MODEL,
            "--knowledge-key-env", KEY_ENV, "--send-image", "--knowledge-labels", "PER,LOC"])
        assert result.exit_code == 0, result.output
        assert "1 post(s) got no knowledge:" in result.output
        assert "posts.jsonl, line 2: spacy-ita.openai_compatible.v1 failed: HTTP 400" in result.output
        images = [r for r in server.requests if isinstance(r["messages"][-1]["content"], list)]
        assert len(images) == 1 and "- LOC: a location" in images[0]["messages"][0]["content"]
        result = CliRunner().invoke(app, [
            "extract", str(source), str(tmp_path / "x.spacy"), "--ocr", "none", "--no-tags",
            "--knowledge-model", MODEL])
        assert result.exit_code == 1 and "need --knowledge-endpoint" in result.output
    docs = list(DocBin().from_disk(tmp_path / "out.spacy").get_docs(spacy.blank("en").vocab))
    assert docs[0]._.visual_context.knowledge == ["Kobe (PER)"]
    assert docs[1]._.knowledge_error is not None


@pytest.mark.parametrize("existing,expected,asked", [
    ("keep", [["Old (PER)"], ["Fresh (PER)"]], ["Fresh post"]),
    ("merge", [["Old (PER)", "Known (PER)"], ["Fresh (PER)"]], ["Known post", "Fresh post"]),
    ("replace", [["Known (PER)"], ["Fresh (PER)"]], ["Known post", "Fresh post"]),
])
def test_existing_knowledge_is_kept_merged_or_replaced(existing, expected, asked):
    with FakeLLM(first_word_is_a_person) as server:
        nlp = llm_nlp(server, existing_knowledge=existing, max_concurrency=1)
        known = make_doc(nlp, "Known post")
        known._.visual_context = spacy_ita.VisualContext(knowledge=["Old (PER)"],
                                                         captions=["a cat"])
        docs = list(nlp.pipe([known, make_doc(nlp, "Fresh post")]))
    assert [doc._.visual_context.knowledge for doc in docs] == expected
    assert docs[0]._.visual_context.captions == ["a cat"]
    assert [post_text(request) for request in server.requests] == asked


def test_a_failure_raises_with_on_error_raise_and_each_component_has_its_own_client():
    with FakeLLM(lambda request: Reply("bad request", 400)) as server:
        nlp = llm_nlp(server, on_error="raise")
        with pytest.raises(RuntimeError, match="ita_knowledge: no knowledge for doc 'Kobe' "
                                               r"\(image_id '7'\): .* HTTP 400"):
            nlp(make_doc(nlp, "Kobe", image_id="7"))
        first = nlp.get_pipe("ita_knowledge").model
        second = llm_nlp(server).get_pipe("ita_knowledge").model
        assert first.load() is first.load() and first.load() is not second.load()


def test_apply_runs_ita_knowledge_in_the_extract_stage(tmp_path):
    """`apply` counts ita_knowledge as a context component: it runs in the
    extract stage, gets apply's cache and error policy, and keeps a pipeline
    with it from getting a second, image-only ita_context."""
    from spacy_ita.bulk.annotate import PipelineSettings, PipelineSpec

    with FakeLLM(first_word_is_a_person) as server:
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        nlp.add_pipe("ita_knowledge", first=True, config=knowledge_config(server.url))
        nlp.to_disk(tmp_path / "model")
        spec = PipelineSpec(str(tmp_path / "model"),
                            PipelineSettings(cache=str(tmp_path / "cache.sqlite")))
        extract, tag, whole = spec.load("extract"), spec.load("tag"), spec.load("all")
        assert extract.pipe_names == ["ita_knowledge"] and tag.pipe_names == ["sentencizer"]
        assert whole.pipe_names == ["ita_knowledge", "sentencizer"]
        knowledge = extract.get_pipe("ita_knowledge")
        assert knowledge.on_error == "ignore" and knowledge.cache.path.endswith("cache.sqlite")
