"""`apply`: files of posts in, one row per post out, resumable, bad rows kept.

The pipeline is the robustness tests' briefly trained tiny-encoder `ita_ner`
behind an `ita_context` with a cheap colour extractor (tests/bulk/apply_code.py,
imported by worker processes through `code`).
"""
import json
import shutil
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List

import pytest
import spacy
from PIL import Image

import apply_code  # noqa: E402,F401  (registers the test extractor and component)
from helpers import trained_pipeline  # noqa: E402

from spacy_ita.bulk import (Columns, LocalSettings, OutputSettings, PipelineSettings,  # noqa: E402
                            apply)
from spacy_ita.bulk.fetch import Fetcher  # noqa: E402
from spacy_ita.bulk.inputs import Post  # noqa: E402
from spacy_ita.bulk.outputs import JsonlWriter  # noqa: E402

CODE = str(Path(__file__).parent / "apply_code.py")
COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}
TEXTS = ["Kobe scores again", "Sunny morning in Boston", "Google opens an office in Zurich",
         "Lakers beat Boston tonight", "nothing to see here", "Happy birthday Federer"]


def build_pipeline(encoder: str, folder: Path, **probe) -> str:
    """The trained tiny pipeline with ita_context (colour tags) first, saved to `folder`."""
    trained = folder / "trained"
    if not trained.exists():
        trained_pipeline(encoder).to_disk(trained)
    nlp = spacy.load(trained)
    nlp.add_pipe("ita_context", first=True, config={
        "ocr_text": None, "object_tags": {"@spacy_ita_extractors": "apply_test.colour_tags.v1"}})
    if probe:
        nlp.add_pipe("apply_test_probe", before="ita_ner", config=probe)
    path = folder / ("probed" if probe else "plain")
    nlp.to_disk(path)
    return str(path)


@pytest.fixture(scope="module")
def pipeline(tiny_encoder, tmp_path_factory) -> str:
    return build_pipeline(tiny_encoder, tmp_path_factory.mktemp("apply_pipeline"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("apply_images")
    for name, colour in COLOURS.items():
        Image.new("RGB", (24, 16), colour).save(folder / f"{name}.png")
    (folder / "broken.jpg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return folder


def posts(images: Path, n: int = 12):
    """Posts with ids: every third without an image, the rest red/green/blue."""
    names = list(COLOURS)
    return [{"id": f"p{i}", "text": TEXTS[i % len(TEXTS)],
             "image": None if i % 3 == 2 else str(images / f"{names[i % 3]}.png")}
            for i in range(n)]


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_id(rows):
    return {row["id"]: row for row in rows}


def results(row):
    return {key: row[key] for key in ("entities", "visual_context", "view", "image_error",
                                      "warning", "knowledge_error", "error", "retryable")}


def test_jsonl_rows_carry_columns_entities_context_and_view(pipeline, images, tmp_path):
    source = write_jsonl(tmp_path / "posts.jsonl", posts(images))
    summary = apply(pipeline, source, tmp_path / "out.jsonl", pipeline=PipelineSettings(code=CODE),
                    images=Fetcher(image_root=images), progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert summary.n_written == 12 and summary.n_errors == 0 and summary.n_skipped == 0
    assert [row["id"] for row in rows] == [f"p{i}" for i in range(12)]
    assert [row["input_row"] for row in rows] == list(range(12))
    assert {row["input_file"] for row in rows} == {"posts.jsonl"}
    for i, row in enumerate(rows):
        assert row["text"] == TEXTS[i % len(TEXTS)]
        if i % 3 == 2:
            assert row["visual_context"] is None and row["view"] == "text"
        else:
            assert row["visual_context"] == {"object_tags": [list(COLOURS)[i % 3]],
                                             "captions": [], "ocr_text": [],
                                             "knowledge": []}
            assert row["view"] == "cross"
        for ent in row["entities"]:
            assert row["text"][ent["start_char"]:ent["end_char"]] == ent["text"]
            assert ent["label"] in ("LOC", "ORG", "PER")
    assert any(row["entities"] for row in rows)


def test_csv_parquet_and_a_folder_give_the_same_rows_as_jsonl(pipeline, images, tmp_path):
    import pandas

    records = posts(images)
    write_jsonl(tmp_path / "in" / "a.jsonl", records)
    frame = pandas.DataFrame(records)
    frame.to_csv(tmp_path / "in" / "b.csv", index=False)
    (tmp_path / "in" / "sub").mkdir()
    frame.to_parquet(tmp_path / "in" / "sub" / "c.parquet")
    apply(pipeline, tmp_path / "in", tmp_path / "out.jsonl", pipeline=PipelineSettings(code=CODE),
          images=Fetcher(image_root=images), progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    files = ["a.jsonl", "b.csv", "sub/c.parquet"]
    assert [(row["input_file"], row["input_row"]) for row in rows] == [
        (name, i) for name in files for i in range(12)]
    per_file = [[results(row) for row in rows if row["input_file"] == name] for name in files]
    assert per_file[0] == per_file[1] == per_file[2]
    # A glob of the same folder finds the same files.
    apply(pipeline, str(tmp_path / "in" / "**" / "*.*"), tmp_path / "glob.jsonl",
          pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=images), progress=False)
    assert read_jsonl(tmp_path / "glob.jsonl") == rows


def test_parquet_output_and_resume_after_new_input(pipeline, images, tmp_path):
    import pyarrow.parquet as pq

    records = posts(images, 9)
    write_jsonl(tmp_path / "in" / "a.jsonl", records)
    out = tmp_path / "out.parquet"
    apply(pipeline, tmp_path / "in", out, pipeline=PipelineSettings(code=CODE),
          images=Fetcher(image_root=images), writing=OutputSettings(rows_per_part=4),
          progress=False)
    assert out.exists() and not (tmp_path / "out.parquet.parts").exists()
    first = pq.read_table(out).to_pylist()
    assert [row["id"] for row in first] == [f"p{i}" for i in range(9)]
    assert first[0]["visual_context"]["object_tags"] == ["red"]
    write_jsonl(tmp_path / "in" / "b.jsonl", records[:3])
    summary = apply(pipeline, tmp_path / "in", out, pipeline=PipelineSettings(code=CODE),
                    images=Fetcher(image_root=images), progress=False)
    assert (summary.n_skipped, summary.n_written) == (9, 3)
    rows = pq.read_table(out).to_pylist()
    assert sorted((r["input_file"], r["input_row"]) for r in rows) == sorted(
        [("a.jsonl", i) for i in range(9)] + [("b.jsonl", i) for i in range(3)])
    assert rows[:9] == first


def test_bad_rows_are_written_with_their_error(pipeline, images, tmp_path):
    lines = [
        json.dumps({"id": "ok", "text": "Kobe scores again", "image": "red.png"}),
        json.dumps({"id": "no-text", "image": "red.png"}),
        json.dumps({"id": "null-text", "text": None}),
        json.dumps({"id": "number-text", "text": 42}),
        '{"id": "cut", "text": "Kobe sc',
        json.dumps("a string"),
        json.dumps({"id": "broken", "text": "Sunny morning in Boston", "image": "broken.jpg"}),
        json.dumps({"id": "missing", "text": "Sunny morning in Boston", "image": "nope.png"}),
        json.dumps({"id": "s3", "text": "Sunny morning in Boston", "image": "s3://b/k.png"}),
        json.dumps({"id": "ok2", "text": "Lakers beat Boston tonight", "image": "green.png"}),
    ]
    source = images / "bad_rows.jsonl"
    source.write_text("\n".join(lines) + "\n")
    summary = apply(pipeline, source, tmp_path / "out.jsonl", pipeline=PipelineSettings(code=CODE),
                    progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [row["input_row"] for row in rows] == list(range(len(lines)))
    assert summary.n_written == 10 and summary.n_errors == 5 and summary.n_image_errors == 3
    errors = [row["error"] for row in rows]
    assert errors[0] is None and errors[-1] is None
    assert "line 2: no text: column 'text' is missing" in errors[1]
    assert "is empty (null)" in errors[2] and "holds a int" in errors[3]
    assert "line 5: invalid JSON" in errors[4] and "expected a JSON object" in errors[5]
    image_errors = {row.get("id"): row["image_error"] for row in rows if row["image_error"]}
    assert "not in a recognised image format" in image_errors["broken"]
    assert "does not exist" in image_errors["missing"]
    assert "unsupported scheme 's3'" in image_errors["s3"]
    for row in rows:  # bad images still get the text-only view
        if row.get("id") in image_errors:
            assert row["view"] == "text" and row["error"] is None
    assert rows[-1]["visual_context"]["object_tags"] == ["green"]


def test_rows_are_counted_as_the_readers_read_them(tmp_path):
    """Ray's engine finds the posts a dead actor dropped by counting each
    file's rows: a CSV with lone CR line ends counted 0 rows (its posts were
    lost silently), and one with a line break in a field one too many."""
    from spacy_ita.bulk.inputs import count_rows, find_inputs, read_posts

    (tmp_path / "cr.csv").write_bytes(b"id,text\r1,Kobe\r2,Boston\r3,Zurich\r")
    (tmp_path / "quoted.csv").write_text('id,text\n1,"two\nlines"\n2,Boston\n')
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf\n" + b'{"text": "Kobe"}\n\n')
    for item in find_inputs(str(tmp_path)):
        assert count_rows(item) == len(list(read_posts([item], Columns()))), item.name


def test_csv_row_with_too_many_fields_is_an_error_row(pipeline, tmp_path):
    source = tmp_path / "posts.csv"
    source.write_text('id,text\n1,Kobe scores again\n2,"Lakers, again",extra\n3,hello\n')
    apply(pipeline, source, tmp_path / "out.jsonl", pipeline=PipelineSettings(code=CODE),
          progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert "row 2 (line 3): 1 more field(s) than the header has" in rows[1]["error"]


class _Handler(SimpleHTTPRequestHandler):
    """Serves the image folder, plus /500, /slow (drips for seconds) and /huge."""

    def do_GET(self):
        if self.path == "/500":
            self.send_error(500, "boom")
        elif self.path == "/slow":
            self.send_response(200)
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(images):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(images)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_images_by_url_file_url_and_absolute_path(pipeline, images, server, tmp_path):
    records = [
        {"id": "http", "text": "Kobe scores again", "image": f"{server}/blue.png"},
        {"id": "file", "text": "Kobe scores again", "image": (images / "blue.png").as_uri()},
        {"id": "abs", "text": "Kobe scores again", "image": str(images / "blue.png")},
        {"id": "404", "text": "Kobe scores again", "image": f"{server}/none.png"},
        {"id": "500", "text": "Kobe scores again", "image": f"{server}/500"},
        {"id": "down", "text": "Kobe scores again",
         "image": f"http://127.0.0.1:{_closed_port()}/x.png"},
        {"id": "huge", "text": "Kobe scores again", "image": f"{server}/huge"},
    ]
    write_jsonl(tmp_path / "posts.jsonl", records)
    apply(pipeline, tmp_path / "posts.jsonl", tmp_path / "out.jsonl",
          pipeline=PipelineSettings(code=CODE),
          images=Fetcher(max_bytes=10**6, image_root=images, allow_private_urls=True),
          progress=False)
    rows = by_id(read_jsonl(tmp_path / "out.jsonl"))
    assert len(rows) == len(records)
    assert results(rows["http"]) == results(rows["file"]) == results(rows["abs"])
    assert rows["http"]["visual_context"]["object_tags"] == ["blue"]
    assert "HTTP 404" in rows["404"]["image_error"]
    assert "after 3 tries: HTTP 500" in rows["500"]["image_error"]
    assert "could not be fetched" in rows["down"]["image_error"]
    assert "over the limit of 1,000,000 bytes" in rows["huge"]["image_error"]
    for name in ("404", "500", "down", "huge"):
        assert rows[name]["view"] == "text" and rows[name]["error"] is None


def test_a_slow_download_stops_at_its_deadline(server):
    post = Post("f", 0, "f, line 1", text="x", image=f"{server}/slow")
    start = time.monotonic()
    Fetcher(timeout=0.5, retries=0, allow_private_urls=True).fetch_posts([post])
    assert time.monotonic() - start < 2.5
    assert post.image is None and "took longer than 0.5 s" in post.image_error


def test_a_partial_last_line_is_cut_and_its_row_redone(tmp_path):
    path = tmp_path / "out.jsonl"
    full = json.dumps(Post("a.jsonl", 0, "").output_row()) + "\n"
    path.write_text(full + '{"input_file": "a.jsonl", "input_ro')
    done = JsonlWriter(path).done_rows()
    assert done.count == 1 and ("a.jsonl", 0) in done and ("a.jsonl", 1) not in done
    assert path.read_text() == full


def test_an_output_that_apply_did_not_write_is_refused(pipeline, tmp_path):
    write_jsonl(tmp_path / "posts.jsonl", [{"text": "hello"}])
    (tmp_path / "out.jsonl").write_text('{"something": "else"}\n')
    with pytest.raises(ValueError, match="line 1: not a row written by `apply`"):
        apply(pipeline, tmp_path / "posts.jsonl", tmp_path / "out.jsonl", progress=False)


def _apply_in_a_forked_child(*args, **kwargs) -> int:
    """Run apply in a child process (forked: nothing to re-import); its exit code."""
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=apply, args=args,
                                                        kwargs=kwargs)
    child.start()
    child.join(300)
    return child.exitcode


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_sigkill_then_rerun_writes_each_post_once_and_redoes_none(tiny_encoder, images,
                                                                  tmp_path, suffix):
    from typer.testing import CliRunner

    from spacy_ita.cli import app

    log, marker = tmp_path / "seen.log", tmp_path / "killed"
    model = build_pipeline(tiny_encoder, tmp_path, log_path=str(log), kill_marker=str(marker))
    records = posts(images, 40)
    records[25]["text"] = "KILL the lights"  # in the fourth batch of 8
    write_jsonl(tmp_path / "posts.jsonl", records)
    out = tmp_path / f"out.{suffix}"
    exit_code = _apply_in_a_forked_child(model, tmp_path / "posts.jsonl", out,
                                         pipeline=PipelineSettings(code=CODE),
                                         images=Fetcher(image_root=images),
                                         writing=OutputSettings(rows_per_part=8), batch_size=8,
                                         progress=False)
    assert exit_code == -9 and marker.exists()
    seen_before = len(log.read_text().splitlines())
    result = CliRunner().invoke(app, ["apply", model, str(tmp_path / "posts.jsonl"), str(out),
                                      "--code", CODE, "--batch-size", "8",
                                      "--image-root", str(images)])
    assert result.exit_code == 0, result.output
    assert "Wrote 16 posts" in result.output and "24 were already there" in result.output
    if suffix == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    else:
        rows = read_jsonl(out)
    assert sorted(row["input_row"] for row in rows) == list(range(40))
    redone = log.read_text().splitlines()[seen_before:]
    assert len(redone) == 16 and redone[1] == "KILL the lights"


def test_n_process_2_gives_the_rows_of_one_process(pipeline, images, tmp_path):
    write_jsonl(tmp_path / "posts.jsonl", posts(images, 20))
    apply(pipeline, tmp_path / "posts.jsonl", tmp_path / "one.jsonl",
          pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=images), batch_size=4,
          progress=False)
    apply(pipeline, tmp_path / "posts.jsonl", tmp_path / "two.jsonl",
          engine=LocalSettings(n_process=2), pipeline=PipelineSettings(code=CODE),
          images=Fetcher(image_root=images), batch_size=4, progress=False)
    assert read_jsonl(tmp_path / "two.jsonl") == read_jsonl(tmp_path / "one.jsonl")


def test_a_post_that_crashes_the_pipeline_costs_only_its_row(pipeline, images, tmp_path,
                                                              monkeypatch):
    from spacy_ita.bulk import annotate

    original = annotate.Annotator._doc

    def explode_on_boom(self, post):
        if "BOOM" in post.text:
            raise RuntimeError("kaboom")
        return original(self, post)

    monkeypatch.setattr(annotate.Annotator, "_doc", explode_on_boom)
    records = posts(images, 6)
    records[3]["text"] = "BOOM goes Boston"
    write_jsonl(tmp_path / "posts.jsonl", records)
    apply(pipeline, tmp_path / "posts.jsonl", tmp_path / "out.jsonl",
          pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=images), progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 6
    assert "the pipeline failed on this post: RuntimeError: kaboom" in rows[3]["error"]
    assert [row["error"] is None for row in rows] == [True, True, True, False, True, True]
    assert rows[0]["visual_context"]["object_tags"] == ["red"]


def _poisoned_run(pipeline, encoder, images, folder, poisoned_rows, batch_size):
    """16 posts in `folder`/posts.jsonl, those of `poisoned_rows` with a text
    that SIGKILLs the process tagging it; their rows from the clean pipeline
    in clean.jsonl. Returns the poisoned pipeline and apply's settings."""
    records = posts(images, 16)
    for row in poisoned_rows:
        records[row]["text"] = "POISON in Boston"
    write_jsonl(folder / "posts.jsonl", records)
    settings = dict(pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=images),
                    batch_size=batch_size, progress=False)
    apply(pipeline, folder / "posts.jsonl", folder / "clean.jsonl", **settings)
    return build_pipeline(encoder, folder, poison="POISON"), settings


@pytest.mark.parametrize("n_process, poisoned_rows", [(2, [5]), (3, [1, 6, 7, 13])])
def test_a_post_that_kills_its_worker_process_costs_only_its_row(
        pipeline, tiny_encoder, images, tmp_path, n_process, poisoned_rows):
    """A post that SIGKILLs the worker tagging it (a crash in native code, out
    of memory) broke the process pool and stopped the run at every rerun: the
    batches in flight are done again post by post, each alone in a process of
    its own (a death in the pool may be another batch's doing), and only the
    posts that kill their worker alone too get an error row."""
    poisoned, settings = _poisoned_run(pipeline, tiny_encoder, images, tmp_path, poisoned_rows,
                                       batch_size=2)
    summary = apply(poisoned, tmp_path / "posts.jsonl", tmp_path / "two.jsonl",
                    engine=LocalSettings(n_process=n_process), **settings)
    rows, expected = read_jsonl(tmp_path / "two.jsonl"), read_jsonl(tmp_path / "clean.jsonl")
    assert summary.n_written == 16 and summary.n_errors == len(poisoned_rows)
    for row in poisoned_rows:
        assert (f"line {row + 1}: not tagged: the worker process died while tagging this post "
                "alone") in rows[row]["error"]
    assert [row for i, row in enumerate(rows) if i not in poisoned_rows] == \
        [row for i, row in enumerate(expected) if i not in poisoned_rows]


def _runs_until_one_ends(*args, most: int = 7, **kwargs) -> List[int]:
    """The exit codes of apply run again in forked children until one ends
    without being killed (at most `most` runs)."""
    exit_codes = []
    while len(exit_codes) < most and exit_codes[-1:] != [0]:
        exit_codes.append(_apply_in_a_forked_child(*args, **kwargs))
    return exit_codes


@pytest.mark.parametrize("suffix, poisoned_rows, retry_errors, expected_exits", [
    ("jsonl", [5], False, [-9, -9, 0]),
    # Parquet keeps rows in memory: the first killer's error row was lost
    # with the run that died on the second, and the two took turns for ever.
    ("parquet", [5, 6], False, [-9, -9, -9, 0]),
    # --retry-errors dropped the first killer's error row at every start.
    ("jsonl", [5, 13], True, [-9, -9, -9, -9, 0]),
])
def test_with_one_process_each_rerun_gets_past_the_posts_that_kill_the_process(
        pipeline, tiny_encoder, images, tmp_path, suffix, poisoned_rows, retry_errors,
        expected_exits):
    """With one process a post that SIGKILLs it ends the run, and the rerun
    died on it again, for ever. The batch in flight is noted in OUTPUT's lock
    file: the rerun tags that batch post by post and dies on the post alone;
    the next writes that post's error row and goes on, and every later note
    keeps it until a run ends."""
    poisoned, settings = _poisoned_run(pipeline, tiny_encoder, images, tmp_path, poisoned_rows,
                                       batch_size=4)
    out = tmp_path / f"out.{suffix}"
    assert _runs_until_one_ends(poisoned, tmp_path / "posts.jsonl", out,
                                writing=OutputSettings(retry_errors=retry_errors),
                                **settings) == expected_exits
    if suffix == "parquet":
        import pyarrow.parquet as pq

        rows = sorted(pq.read_table(out).to_pylist(), key=lambda row: row["input_row"])
    else:
        rows = sorted(read_jsonl(out), key=lambda row: row["input_row"])
    expected = read_jsonl(tmp_path / "clean.jsonl")
    assert [row["input_row"] for row in rows] == list(range(16))
    for row in poisoned_rows:
        assert (f"line {row + 1}: not tagged: an earlier run of apply died while tagging this "
                "post alone") in rows[row]["error"]
    assert [row for row in rows if row["input_row"] not in poisoned_rows] == \
        [row for row in expected if row["input_row"] not in poisoned_rows]
    assert not (tmp_path / f".out.{suffix}.lock").exists()


def test_overwrite_forgets_the_post_a_killed_run_died_on(pipeline, tiny_encoder, images,
                                                         tmp_path):
    records = posts(images, 8)
    records[5]["text"] = "POISON in Boston"
    write_jsonl(tmp_path / "posts.jsonl", records)
    settings = dict(pipeline=PipelineSettings(code=CODE), images=Fetcher(image_root=images),
                    batch_size=4, progress=False)
    poisoned = build_pipeline(tiny_encoder, tmp_path, poison="POISON")
    out = tmp_path / "out.jsonl"
    assert _runs_until_one_ends(poisoned, tmp_path / "posts.jsonl", out, most=2,
                                **settings) == [-9, -9]  # the note now says: row 5, alone
    apply(pipeline, tmp_path / "posts.jsonl", out, writing=OutputSettings(overwrite=True),
          **settings)
    assert [row["error"] for row in read_jsonl(out)] == [None] * 8


def _apply_command_that_meets_sigterm(encoder, images, folder, n_posts, *options):
    """The apply CLI's command line over `n_posts` posts whose sixth SIGTERMs
    the process tagging it, the first time only; and its OUTPUT."""
    records = posts(images, n_posts)
    records[5]["text"] = "STOP here"
    write_jsonl(folder / "posts.jsonl", records)
    model = build_pipeline(encoder, folder, stop_marker=str(folder / "stopped"))
    out = folder / "out.jsonl"
    return [sys.executable, "-m", "spacy_ita", "apply", model, str(folder / "posts.jsonl"),
            str(out), "--code", CODE, "--image-root", str(images), *options], out


def test_sigterm_ends_the_run_cleanly_so_the_rerun_blames_no_post(tiny_encoder, images,
                                                                  tmp_path):
    """A run stopped by SIGTERM (a scheduler, `timeout`) left its note as a
    crash does: a second SIGTERM while that batch's posts were tagged alone
    would have blamed an innocent post. It now ends as Ctrl-C does."""
    import subprocess

    command, out = _apply_command_that_meets_sigterm(tiny_encoder, images, tmp_path, 12,
                                                     "--batch-size", "4")
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 143, first.stderr[-2000:]
    assert len(read_jsonl(out)) == 4 and not (tmp_path / ".out.jsonl.lock").exists()
    assert subprocess.run(command, capture_output=True, timeout=300).returncode == 0
    assert [row["error"] for row in read_jsonl(out)] == [None] * 12


def test_a_worker_stopped_by_sigterm_costs_the_run_nothing(tiny_encoder, images, tmp_path):
    """Workers forked from the CLI inherited its SIGTERM handler, so a worker
    stopped by SIGTERM (an out-of-memory guard) ended the whole run. It dies
    as any worker now: its batch is redone post by post."""
    import subprocess

    command, out = _apply_command_that_meets_sigterm(tiny_encoder, images, tmp_path, 8,
                                                     "--batch-size", "2", "--n-process", "2")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [row["error"] for row in read_jsonl(out)] == [None] * 8


def test_the_note_of_the_posts_in_flight_reads_back_and_anything_else_reads_as_none():
    from spacy_ita.bulk.outputs import InFlight

    note = InFlight(frozenset({("a.jsonl", 4), ("b\udc80.csv", 5)}), ("a.jsonl", 4),
                    frozenset({("a.jsonl", 1)}))
    assert InFlight.from_bytes(note.to_bytes()) == note
    longer = InFlight(frozenset(("a.jsonl", row) for row in range(40))).to_bytes()
    assert InFlight.from_bytes(note.to_bytes() + longer[len(note.to_bytes()):]) == note
    for other in (b"", b"{", longer[:-20], b'{"batch": 1, "alone": null, "killed": []}',
                  b"[1]\n", b'{"batch": [["a", 1e999]], "alone": null, "killed": []}',
                  b'{"batch": ["a1", "b2"], "alone": null, "killed": []}',
                  b'{"batch": [["a", true]], "alone": null, "killed": []}',
                  b"[" * 100_000 + b"]" * 100_000):
        assert InFlight.from_bytes(other) == InFlight()


def test_a_pipeline_the_workers_cannot_load_stops_the_run(pipeline, tmp_path):
    """Its load failure broke the pool, which read as every post killing its
    worker: each row an error, none retryable. Now the run stops with the
    load's error and writes nothing, as with one process."""
    broken = tmp_path / "broken"
    shutil.copytree(pipeline, broken)
    weights = broken / "ita_ner" / "model"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "Kobe scores again"}])
    with pytest.raises(ValueError, match="ita_ner: cannot load"):
        apply(str(broken), tmp_path / "posts.jsonl", tmp_path / "out.jsonl",
              engine=LocalSettings(n_process=2), pipeline=PipelineSettings(code=CODE),
              progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_json_row_nested_too_deep_is_an_error_row(pipeline, tmp_path):
    """Ray cannot pickle a row nested about 500 deep and stopped the whole run
    at every rerun: past MAX_JSON_DEPTH a row is an error row, in both engines."""
    from spacy_ita.bulk.inputs import MAX_JSON_DEPTH

    deep = {"id": "deep", "text": "Kobe scores again", "meta": json.loads("[" * 600 + "]" * 600)}
    edge = {"id": "edge", "text": "Kobe scores again",
            "meta": json.loads("[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1))}
    write_jsonl(tmp_path / "posts.jsonl", [edge, deep, {"id": "ok", "text": "Kobe scores again"}])
    apply(pipeline, tmp_path / "posts.jsonl", tmp_path / "out.jsonl",
          pipeline=PipelineSettings(code=CODE), progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [row["error"] is None for row in rows] == [True, False, True]
    assert "line 2: lists and objects nested deeper than 100 levels" in rows[1]["error"]


@pytest.mark.parametrize("options, message", [
    (["--engine", "spark"], "engine must be one of ('local', 'ray')"),
    (["--keep", "id,entities"], "cannot keep column(s) ['entities']"),
], ids=["engine", "keep"])
def test_cli_refuses_bad_options_with_a_clear_error(pipeline, tmp_path, options, message):
    from typer.testing import CliRunner

    from spacy_ita.cli import app

    write_jsonl(tmp_path / "posts.jsonl", [{"id": 1, "text": "hello"}])
    result = CliRunner().invoke(app, ["apply", pipeline, str(tmp_path / "posts.jsonl"),
                                      str(tmp_path / "out.jsonl"), *options])
    assert result.exit_code == 1 and message in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_output_must_be_jsonl_or_parquet(pipeline, tmp_path):
    write_jsonl(tmp_path / "posts.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match="must end in .jsonl or .parquet"):
        apply(pipeline, tmp_path / "posts.jsonl", tmp_path / "out.csv", progress=False)


def test_parquet_image_bytes_and_which_columns_are_carried(pipeline, images, tmp_path):
    import pandas

    red = (images / "red.png").read_bytes()
    pandas.DataFrame({"id": [1, 2], "text": ["Kobe scores again", "hello"],
                      "image": [red, None], "lang": ["en", "en"]}).to_parquet(
        tmp_path / "posts.parquet")
    apply(pipeline, tmp_path / "posts.parquet", tmp_path / "all.jsonl",
          pipeline=PipelineSettings(code=CODE), progress=False)
    rows = read_jsonl(tmp_path / "all.jsonl")
    assert rows[0]["visual_context"]["object_tags"] == ["red"] and rows[1]["view"] == "text"
    # Binary cells (the embedded image) are not carried unless asked for.
    assert [sorted(set(row) - set(results(row)) - {"input_file", "input_row"})
            for row in rows] == [["id", "lang", "text"], ["id", "lang", "text"]]
    apply(pipeline, tmp_path / "posts.parquet", tmp_path / "id.jsonl",
          pipeline=PipelineSettings(code=CODE), columns=Columns(keep=["id"]), progress=False)
    assert [row["id"] for row in read_jsonl(tmp_path / "id.jsonl")] == [1, 2]
    assert "text" not in read_jsonl(tmp_path / "id.jsonl")[0]
