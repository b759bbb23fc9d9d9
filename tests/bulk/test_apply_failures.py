"""`apply` when the environment fails, not the posts: a missing LM key, a
corrupt or unwritable cache, a dead endpoint fail before any row is written;
an LM or cache failure during the run is written as a retryable row that the
next run redoes (and only it); every row failing is a non-zero exit. Also the
`view` column, which is what `ita_ner` says it read.

The pipeline is the robustness tests' tiny trained `ita_ner` behind an
`ita_knowledge` asking the OpenAI-compatible test server of fake_llm on 127.0.0.1.
"""
import json
from pathlib import Path

import pytest
import spacy
from typer.testing import CliRunner

from fake_llm import KEY, KEY_ENV, MODEL, FakeLLM, Reply, entities, free_port, post_text
from helpers import trained_pipeline

from spacy_ita.bulk import PipelineSettings, apply
from spacy_ita.bulk.outputs import is_redone, open_writer
from spacy_ita.cli import app
from spacy_ita.cli.evaluate import evaluate_views
from spacy_ita.context.cache import CacheError, ContextCache

TEXTS = ["Kobe scores again", "Sunny morning in Boston", "nothing to see here",
         "Lakers beat Boston tonight"]


def knows_the_first_word(request: dict) -> Reply:
    """Knowledge that names the post's first word, except for "nothing to see
    here", whose knowledge names someone the post does not mention."""
    text = post_text(request)
    name = "Obama" if text.startswith("nothing") else text.split()[0]
    return Reply(entities((name, "PER")))


@pytest.fixture(scope="module")
def server():
    with FakeLLM(knows_the_first_word) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_server(server, monkeypatch):
    """The key set, the default answers, no requests recorded."""
    monkeypatch.setenv(KEY_ENV, KEY)
    server.reply = knows_the_first_word
    server.requests.clear()


@pytest.fixture(scope="module")
def trained(tiny_encoder, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("apply_failures") / "trained"
    trained_pipeline(tiny_encoder).to_disk(path)
    return path


def with_knowledge(trained: Path, folder: Path, base_url: str) -> str:
    """The trained pipeline with an ita_knowledge that asks `base_url`."""
    nlp = spacy.load(trained)
    nlp.add_pipe("ita_knowledge", first=True, config={"model": {
        "@misc": "spacy-ita.openai_compatible.v1", "base_url": base_url, "model": MODEL,
        "api_key_env": KEY_ENV, "json_mode": False, "timeout": 5.0, "max_retries": 1,
        "backoff": 0.01}})
    nlp.to_disk(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model(trained, server, tmp_path_factory) -> str:
    return with_knowledge(trained, tmp_path_factory.mktemp("llm_model"), server.url)


@pytest.fixture
def posts(tmp_path) -> Path:
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": text}) + "\n"
                            for i, text in enumerate(TEXTS)))
    return path


def run_cli(model: str, posts: Path, output: Path, *options: str):
    return CliRunner().invoke(app, ["apply", model, str(posts), str(output), "--no-context",
                                    *options])


def read_rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def asked(server) -> list:
    return [post_text(request) for request in server.requests]


def test_a_missing_key_fails_before_any_row_and_the_rerun_with_it_does_all(
        model, server, posts, tmp_path, monkeypatch):
    output = tmp_path / "out.jsonl"
    monkeypatch.delenv(KEY_ENV)
    result = run_cli(model, posts, output)
    assert result.exit_code == 1
    assert f"environment variable {KEY_ENV} (api_key_env) is not set" in result.output
    assert not output.exists() and server.requests == []
    monkeypatch.setenv(KEY_ENV, KEY)
    result = run_cli(model, posts, output)
    assert result.exit_code == 0, result.output
    rows = read_rows(output)
    assert [row["id"] for row in rows] == [0, 1, 2, 3]
    assert all(row["error"] is None and row["knowledge_error"] is None
               and row["retryable"] is False for row in rows)
    assert rows[0]["visual_context"]["knowledge"] == ["Kobe (PER)"]


@pytest.mark.parametrize("kind", ["corrupt", "unwritable"])
def test_an_unusable_cache_fails_before_any_row(model, server, posts, tmp_path, kind):
    if kind == "corrupt":
        cache = tmp_path / "contexts.sqlite"
        cache.write_bytes(b"this is not an SQLite file" * 100)
    else:  # its folder cannot be made: a file is in the way (even root cannot write there)
        (tmp_path / "taken").write_text("a file")
        cache = tmp_path / "taken" / "contexts.sqlite"
    output = tmp_path / "out.jsonl"
    result = run_cli(model, posts, output, "--cache", str(cache))
    assert result.exit_code == 1
    assert f"the context cache {cache} cannot be opened" in result.output
    assert "delete it, or choose another cache file" in result.output
    assert not output.exists() and server.requests == []


def test_a_dead_endpoint_fails_before_any_row(trained, posts, tmp_path):
    dead = with_knowledge(trained, tmp_path / "dead",
                          f"http://127.0.0.1:{free_port()}/v1")
    output = tmp_path / "out.parquet"
    result = run_cli(dead, posts, output)
    assert result.exit_code == 1 and "cannot be reached" in result.output
    assert not output.exists() and not (tmp_path / "out.parquet.parts").exists()


def test_an_endpoint_that_dies_after_the_check_gives_retryable_rows(trained, posts, tmp_path,
                                                                    monkeypatch):
    from spacy_ita.bulk.annotate import PipelineSpec

    dead = with_knowledge(trained, tmp_path / "dead", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setattr(PipelineSpec, "preflight", lambda self: None)  # it was up then
    summary = apply(dead, posts, tmp_path / "out.jsonl",
                    pipeline=PipelineSettings(add_context=False), progress=False)
    assert summary.all_failed and summary.n_retryable == 4
    rows = read_rows(tmp_path / "out.jsonl")
    assert all("SetupError" in row["error"] and "cannot be reached" in row["error"]
               and row["retryable"] for row in rows)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_post_whose_lm_call_failed_is_retryable_and_the_next_run_redoes_only_it(
        model, server, posts, tmp_path, suffix):
    def fails_for_boston(request):
        if post_text(request) == "Sunny morning in Boston":
            return Reply("the model crashed", 500)
        return knows_the_first_word(request)

    server.reply = fails_for_boston
    output = tmp_path / f"out.{suffix}"
    result = run_cli(model, posts, output)
    assert result.exit_code == 0, result.output
    assert "1 rows failed for a reason that may pass" in result.output
    assert "rerun the same command" in result.output and "--retry-errors" in result.output
    first = {row["id"]: row for row in read_output(output)}
    assert "failed: HTTP 500" in first[1]["knowledge_error"]
    assert "the model crashed" in first[1]["knowledge_error"]
    assert "posts.jsonl, line 2" in first[1]["knowledge_error"]
    assert first[1]["retryable"] is True and first[1]["error"] is None
    assert first[1]["visual_context"]["knowledge"] == []
    assert [first[i]["retryable"] for i in (0, 2, 3)] == [False] * 3
    server.reply, server.requests[:] = knows_the_first_word, []
    result = run_cli(model, posts, output)
    assert result.exit_code == 0, result.output
    assert "Wrote 1 posts (1 of them redone)" in result.output
    assert "3 were already there" in result.output
    assert asked(server) == ["Sunny morning in Boston"]
    rows = read_output(output)
    assert sorted(row["id"] for row in rows) == [0, 1, 2, 3]  # each post once
    again = {row["id"]: row for row in rows}
    assert again[1]["knowledge_error"] is None and again[1]["retryable"] is False
    assert again[1]["visual_context"]["knowledge"] == ["Sunny (PER)"]
    assert all(again[i] == first[i] for i in (0, 2, 3))


def read_output(path: Path):
    if path.suffix == ".jsonl":
        return read_rows(path)
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_every_row_failing_is_a_non_zero_exit_and_retry_errors_redoes_final_errors(
        model, server, posts, tmp_path):
    server.reply = lambda request: Reply("overloaded", 503)
    output = tmp_path / "out.jsonl"
    result = run_cli(model, posts, output)
    assert result.exit_code == 1 and "every row failed" in result.output
    assert [row["retryable"] for row in read_rows(output)] == [True] * 4
    # Now one post gets a final error (a 400 is not retried): redone only when asked.
    server.reply = lambda request: (Reply("too long", 400) if post_text(request) == TEXTS[0]
                                    else knows_the_first_word(request))
    assert run_cli(model, posts, output).exit_code == 0
    final = next(row for row in read_rows(output) if row["id"] == 0)
    assert "HTTP 400" in final["knowledge_error"] and final["retryable"] is False
    server.requests.clear()
    assert run_cli(model, posts, output).exit_code == 0
    assert server.requests == []  # the final error stays done
    server.reply = knows_the_first_word
    result = run_cli(model, posts, output, "--retry-errors")
    assert result.exit_code == 0 and "(1 of them redone)" in result.output
    assert asked(server) == [TEXTS[0]]
    rows = read_rows(output)
    assert len(rows) == 4 and all(row["knowledge_error"] is None for row in rows)


def test_a_cache_failing_mid_run_makes_retryable_rows(model, posts, tmp_path, monkeypatch):
    def full_disk(self, rows):
        raise CacheError(f"the context cache {self.path} cannot be written to: disk full")

    monkeypatch.setattr(ContextCache, "put_many", full_disk)
    summary = apply(model, posts, tmp_path / "out.jsonl",
                    pipeline=PipelineSettings(cache=tmp_path / "cache.sqlite", add_context=False),
                    progress=False)
    assert summary.n_retryable == 4 and summary.all_failed
    rows = read_rows(tmp_path / "out.jsonl")
    assert all("CacheError" in row["error"] and row["retryable"] for row in rows)


def test_the_view_is_what_ita_ner_read(model, posts, tmp_path):
    apply(model, posts, tmp_path / "out.jsonl", pipeline=PipelineSettings(add_context=False),
          progress=False)
    rows = read_rows(tmp_path / "out.jsonl")
    # The knowledge of "nothing to see here" names no word of it: ita_ner drops
    # it and reads the post alone.
    assert rows[2]["visual_context"]["knowledge"] == ["Obama (PER)"]
    assert [row["view"] for row in rows] == ["cross", "cross", "text", "cross"]
    nlp = spacy.load(model)
    docs = list(nlp.pipe(TEXTS))
    assert nlp.get_pipe("ita_ner").views(docs) == [row["view"] for row in rows]
    assert [doc._.ita_view for doc in docs] == [row["view"] for row in rows]  # as it tagged
    from spacy.training import Example

    examples = [Example(doc.copy(), doc) for doc in docs]
    scores = evaluate_views(nlp, examples, ["cross", "text"])
    assert (scores["cross"]["n_cross_docs"], scores["text"]["n_cross_docs"]) == (3, 0)


def test_writers_drop_only_the_rows_to_redo(tmp_path):
    # A carried column may hold the same key deeper down: not a mark.
    rows = [{"input_file": "a.jsonl", "input_row": i, "meta": {"retryable": True, "error": "x"},
             "entities": [], "visual_context": None, "view": None, "image_error": None,
             "error": "bad JSON" if i == 1 else None, "retryable": i == 2}
            for i in range(4)]
    for name in ("out.jsonl", "out.parquet"):
        writer = open_writer(tmp_path / name)
        writer.write(rows)
        writer.finish()
        assert open_writer(tmp_path / name).drop_redone() == 1
        assert open_writer(tmp_path / name).drop_redone(retry_errors=True) == 1
        done = open_writer(tmp_path / name).done_rows()
        assert [("a.jsonl", i) in done for i in range(4)] == [True, False, False, True]
    assert not is_redone({"retryable": True})  # not a row of apply's: never dropped
