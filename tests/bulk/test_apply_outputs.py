"""`apply`'s reading and writing at the edges: no row can stop a run (text
that is not valid Unicode is repaired, with a warning in its row; a row the
writer cannot write becomes an error row), and an OUTPUT that apply did not
write is never changed.

The pipeline is a blank English one with an entity ruler: the tests are about
files, not about the model.
"""
import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict

import pytest

from spacy_ita.bulk import OutputSettings
from spacy_ita.bulk.inputs import Post
from spacy_ita.bulk.outputs import PARTS_MARKER, JsonlWriter, ParquetWriter, open_writer
from apply_files import read_rows, run, write_jsonl

CUT_EMOJI = "\ud83d"  # the first half of 😀 (\ud83d\ude00), as a tweet cut by length ends




def snapshot(folder: Path) -> Dict[str, bytes]:
    """Every file under `folder`, by path, with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# 3. No row can stop a run.

@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_cut_emoji_is_repaired_with_a_warning_and_its_batch_written(ruler, tmp_path, suffix):
    records = [{"id": 0, "text": "Kobe in Boston", "user": "ann"},
               {"id": 1, "text": "Boston " + CUT_EMOJI, "user": "bob"},
               {"id": 2, "text": "Kobe again", "user": "cy" + CUT_EMOJI},
               {"id": 3, "text": "nothing here", "user": "dee"}]
    source = write_jsonl(tmp_path / "posts.jsonl", records)
    assert "\\ud83d" in source.read_text()  # the file itself is valid UTF-8
    out = tmp_path / f"out.{suffix}"
    summary = run(ruler, source, out, batch_size=8)
    assert (summary.n_written, summary.n_errors, summary.n_warnings) == (4, 0, 2)
    rows = read_rows(out)
    assert [row["id"] for row in rows] == [0, 1, 2, 3]
    assert [row["error"] for row in rows] == [None] * 4
    assert rows[0]["warning"] is None and rows[3]["warning"] is None
    assert rows[1]["text"] == "Boston \ufffd" and rows[2]["user"] == "cy\ufffd"
    assert f"{source}, line 2: half of a surrogate pair" in rows[1]["warning"]
    assert "column(s) 'text'" in rows[1]["warning"]
    assert f"{source}, line 3" in rows[2]["warning"] and "'user'" in rows[2]["warning"]
    assert [(e["text"], e["label"]) for e in rows[1]["entities"]] == [("Boston", "LOC")]
    assert [e["text"] for e in rows[0]["entities"]] == ["Kobe", "Boston"]
    again = run(ruler, source, out)  # the repaired rows count as done
    assert (again.n_written, again.n_skipped) == (0, 4)


def _results_with_surrogates() -> Post:
    post = Post("posts.jsonl", 1, "posts.jsonl, line 2", text="Boston", carried={"id": 1})
    post.entities = [{"text": "Bo" + CUT_EMOJI, "label": "LOC", "start_char": 0,
                      "end_char": 3}]
    post.visual_context = {"object_tags": ["dog" + CUT_EMOJI], "captions": [], "ocr_text": [],
                           "knowledge": ["Boston is a city"]}
    return post


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_surrogates_in_entities_and_context_are_repaired_by_the_writer(tmp_path, suffix):
    good = [Post("posts.jsonl", row, "", text="ok", carried={"id": row}) for row in (0, 2)]
    posts = [good[0], _results_with_surrogates(), good[1]]
    writer = open_writer(tmp_path / f"out.{suffix}", rows_per_part=2)
    writer.done_rows()
    written = writer.write([post.output_row() for post in posts])
    writer.finish()
    rows = read_rows(tmp_path / f"out.{suffix}")
    assert rows == written and [row["id"] for row in rows] == [0, 1, 2]
    assert rows[1]["entities"][0]["text"] == "Bo\ufffd"
    assert rows[1]["visual_context"]["object_tags"] == ["dog\ufffd"]
    assert rows[1]["visual_context"]["knowledge"] == ["Boston is a city"]
    assert "column(s) 'entities', 'visual_context'" in rows[1]["warning"]
    assert rows[0]["warning"] is None and rows[2]["warning"] is None


class _Unprintable:
    def __str__(self):
        raise RuntimeError("no text for this value")


@pytest.mark.parametrize("suffix, bad_value", [
    ("jsonl", _Unprintable()),
    ("parquet", "not a list of entities"),
], ids=["jsonl", "parquet"])
def test_a_row_the_writer_cannot_write_becomes_an_error_row(tmp_path, suffix, bad_value):
    rows = [Post("posts.jsonl", row, "", text="ok", carried={"id": row}).output_row()
            for row in range(3)]
    rows[1]["id" if suffix == "jsonl" else "entities"] = bad_value
    writer = open_writer(tmp_path / f"out.{suffix}")
    writer.done_rows()
    writer.write(rows)
    writer.finish()
    written = read_rows(tmp_path / f"out.{suffix}")
    assert [row["input_row"] for row in written] == [0, 1, 2]
    assert [row.get("id") for row in written] == [0, None, 2]  # the error row keeps no columns
    assert written[0]["error"] is None and written[2]["error"] is None
    assert f"the row could not be written to {tmp_path / f'out.{suffix}'}" in written[1]["error"]
    assert written[1]["entities"] == []


@pytest.mark.parametrize("rows_per_part", [8, 2], ids=["one part", "parts"])
def test_a_parquet_cell_of_another_type_is_left_out_with_a_warning(ruler, tmp_path,
                                                                   rows_per_part):
    ids = [1, 2, "3a", 4, 5.5, None]
    source = write_jsonl(tmp_path / "posts.jsonl",
                         [{"id": value, "text": "Kobe"} for value in ids])
    summary = run(ruler, source, tmp_path / "out.parquet",
                  writing=OutputSettings(rows_per_part=rows_per_part), batch_size=2)
    rows = read_rows(tmp_path / "out.parquet")
    assert (summary.n_written, summary.n_errors, summary.n_warnings) == (6, 0, 2)
    assert [row["id"] for row in rows] == [1, 2, None, 4, None, None]
    assert "column 'id': a str does not fit the column's type" in rows[2]["warning"]
    assert "(int64); left out (null)" in rows[4]["warning"]
    assert all(row["entities"] for row in rows)


@pytest.mark.parametrize("empty", [{}, [{}], {"a": {}}], ids=["{}", "[{}]", "{a: {}}"])
def test_a_parquet_column_of_empty_objects_is_left_out_with_a_warning(ruler, tmp_path, empty):
    """Parquet has no struct without fields: such cells are null, not a stopped run."""
    source = write_jsonl(tmp_path / "posts.jsonl",
                         [{"meta": empty, "text": text} for text in ("Kobe", "Boston", "Kobe")])
    out = tmp_path / "out.parquet"
    summary = run(ruler, source, out, writing=OutputSettings(rows_per_part=2), batch_size=2)
    assert (summary.n_written, summary.n_errors, summary.n_warnings) == (3, 0, 3)
    rows = read_rows(out)
    assert [row["meta"] for row in rows] == [None] * 3
    assert all(f"column 'meta': Parquet cannot hold this {type(empty).__name__} (it is or "
               "holds an empty object {}); left out (null)" in row["warning"] for row in rows)
    assert [[e["text"] for e in row["entities"]] for row in rows] == [["Kobe"], ["Boston"],
                                                                       ["Kobe"]]
    assert (run(ruler, source, out).n_skipped, out.exists()) == (3, True)


def test_a_value_parquet_cannot_hold_costs_only_its_cell(ruler, tmp_path):
    """An unsigned 64-bit id (Arrow takes ints as int64) is left out; the
    row's results and other columns are written."""
    source = write_jsonl(tmp_path / "posts.jsonl", [
        {"id": 1, "user": "ann", "text": "Kobe"},
        {"id": 18446744073709551615, "user": "bob", "text": "Kobe in Boston"}])
    summary = run(ruler, source, tmp_path / "out.parquet")
    assert (summary.n_written, summary.n_errors, summary.n_warnings) == (2, 0, 1)
    rows = read_rows(tmp_path / "out.parquet")
    assert [(row["id"], row["user"]) for row in rows] == [(1, "ann"), (None, "bob")]
    assert [e["text"] for e in rows[1]["entities"]] == ["Kobe", "Boston"]
    assert rows[1]["error"] is None and rows[0]["warning"] is None
    assert "column 'id': Parquet cannot hold this int (OverflowError" in rows[1]["warning"]


def test_a_long_csv_field_is_read_and_one_over_the_limit_is_an_error_row(ruler, tmp_path,
                                                                         monkeypatch):
    import csv

    from spacy_ita.bulk import inputs

    monkeypatch.setattr(inputs, "CSV_FIELD_LIMIT", 300_000)
    folder = tmp_path / "in"
    folder.mkdir()
    long, too_long = "Boston " + "x" * 200_000, "Kobe " + "y" * 300_000  # csv's default: 131,072
    (folder / "a.csv").write_text(f"id,text\n1,Kobe\n2,{long}\n3,{too_long}\n4,Boston\n")
    (folder / "b.csv").write_text(f"id,{too_long}\n1,Kobe\n")  # the header itself
    limit = csv.field_size_limit()
    summary = run(ruler, folder, tmp_path / "out.jsonl")
    assert csv.field_size_limit() == limit  # the process's own limit is left as it was
    rows = read_rows(tmp_path / "out.jsonl")
    assert (summary.n_written, summary.n_errors) == (5, 2)
    assert [row.get("id") for row in rows] == ["1", "2", None, "4", None]
    assert rows[1]["text"] == long and rows[1]["entities"][0]["text"] == "Boston"
    assert rows[2]["error"] == (f"{folder / 'a.csv'}, row 3 (line 4): cannot be read as CSV: "
                                "field larger than field limit (300000)")
    assert rows[3]["error"] is None and rows[3]["entities"][0]["text"] == "Boston"
    assert rows[4]["error"].startswith(f"{folder / 'b.csv'}, line 1 (the header): cannot be read")
    again = run(ruler, folder, tmp_path / "out.jsonl")
    assert (again.n_written, again.n_skipped) == (0, 5)


def test_bytes_that_are_not_utf8_in_jsonl_and_csv_are_named_in_the_row(ruler, tmp_path):
    (tmp_path / "in").mkdir()
    jsonl = tmp_path / "in" / "a.jsonl"
    jsonl.write_bytes(b'{"text": "Kobe in Boston"}\n{"text": "caf\xe9 in Boston"}\n')
    csv = tmp_path / "in" / "b.csv"
    csv.write_bytes(b"\xef\xbb\xbfid,text\n1,Kobe\n2,Z\xfcrich and Boston\n")  # with a BOM
    summary = run(ruler, tmp_path / "in", tmp_path / "out.jsonl")
    rows = read_rows(tmp_path / "out.jsonl")
    assert (summary.n_written, summary.n_errors, summary.n_warnings) == (4, 0, 2)
    assert [row["warning"] is None for row in rows] == [True, False, True, False]
    assert rows[1]["text"] == "caf\ufffd in Boston"
    assert f"{jsonl}, line 2: bytes that are not UTF-8 (the first at byte 13" in rows[1]["warning"]
    assert rows[3]["id"] == "2" and rows[3]["text"] == "Z\ufffdrich and Boston"
    assert f"{csv}, row 2 (line 3): bytes that are not UTF-8" in rows[3]["warning"]
    assert "column(s) 'text'" in rows[3]["warning"]
    assert [e["text"] for e in rows[3]["entities"]] == ["Boston"]


def test_a_file_name_that_is_not_utf8_is_written_and_resumed(ruler, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / os.fsdecode(b"caf\xe9.jsonl"), [{"text": "Kobe"}, {"text": "x"}])
    summary = run(ruler, folder, tmp_path / "out.jsonl")
    rows = read_rows(tmp_path / "out.jsonl")
    assert (summary.n_written, summary.n_warnings) == (2, 0)
    assert [row["input_file"] for row in rows] == ["caf\\xe9.jsonl"] * 2
    again = run(ruler, folder, tmp_path / "out.jsonl")
    assert (again.n_written, again.n_skipped) == (0, 2)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_parquet_input_with_strings_that_are_not_utf8(ruler, tmp_path, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def strings(values):  # a writer that does not check its strings' bytes
        return pa.array(values, type=pa.binary()).view(pa.string())

    # Row 2: Latin-1; row 3: a lone surrogate as CESU-8 (Java's modified UTF-8) writes it.
    texts = [b"Kobe", b"Boston \xe9t\xe9", b"Kobe \xed\xa0\xbd", b"Boston"]
    tags = pa.ListArray.from_arrays([0, 1, 2, 3, 4], strings([b"a", b"b\xff", b"c", b"d"]))
    pq.write_table(pa.table({"text": strings(texts), "tags": tags}), tmp_path / "posts.parquet")
    out = tmp_path / f"out.{suffix}"
    summary = run(ruler, tmp_path / "posts.parquet", out)
    rows = read_rows(out)
    assert (summary.n_written, summary.n_errors, summary.n_warnings) == (4, 0, 2)
    assert rows[1]["text"] == "Boston \ufffdt\ufffd" and rows[1]["tags"] is None
    assert f"{tmp_path / 'posts.parquet'}, row 2: column 'text': bytes" in rows[1]["warning"]
    assert "column 'tags': holds text that is not UTF-8; left out" in rows[1]["warning"]
    assert rows[2]["text"].startswith("Kobe \ufffd")
    assert "row 3: column 'text'" in rows[2]["warning"]
    assert [row["warning"] for row in (rows[0], rows[3])] == [None, None]
    assert rows[3]["tags"] == ["d"] and rows[1]["entities"][0]["text"] == "Boston"
    assert [e["text"] for e in rows[2]["entities"]] == ["Kobe"]


# 6. OUTPUT is never clobbered.

def _parquet_dataset(folder: Path) -> None:
    import pandas

    folder.mkdir()
    pandas.DataFrame({"text": ["a", "b"]}).to_parquet(folder / "part-0.parquet")


def _parts_with_a_stray(output: Path) -> None:
    parts = output.with_name(output.name + ".parts")
    parts.mkdir()
    (parts / PARTS_MARKER).write_text("{}")
    (parts / "notes.txt").write_text("mine")


FOREIGN = {
    "json line without newline": ("out.jsonl", lambda path: path.write_text('{"id": 1}'),
                                  "line 1: not a row written by `apply`"),
    "csv named jsonl": ("out.jsonl", lambda path: path.write_text("id,text\n1,hi\n"),
                        "line 1: not a row written by `apply`"),
    "blank line, then json": ("out.jsonl", lambda path: path.write_text('\n{"id": 1}\n'),
                              "line 2: not a row written by `apply`"),
    "other jsonl": ("out.jsonl", lambda path: path.write_text('{"input_file": "x"}\n'),
                    "(it has no input_row, entities"),
    "csv output": ("out.csv", lambda path: path.write_text("id,text\n1,hi\n"),
                   "must end in .jsonl or .parquet"),
    "folder": ("out.jsonl", lambda path: (path.mkdir(), (path / "notes.txt").write_text("x")),
               "is a folder"),
    "parquet dataset folder": ("out.parquet", _parquet_dataset, "is a folder"),
    "other parquet file": ("out.parquet",
                           lambda path: (_parquet_dataset(path.parent / "d"),
                                         (path.parent / "d" / "part-0.parquet").rename(path)),
                           "is not an apply output (it has no input_file"),
    "parts folder not apply's": ("out.parquet",
                                 lambda path: _parquet_dataset(path.with_name("out.parquet.parts")),
                                 f"has no {PARTS_MARKER}"),
    "parts folder with a stray file": ("out.parquet", _parts_with_a_stray,
                                       "holds what apply does not write there: notes.txt"),
    "lock file not apply's": ("out.jsonl",
                              lambda path: path.with_name(".out.jsonl.lock").write_text("mine"),
                              ".out.jsonl.lock is where apply keeps the lock of OUTPUT, but it "
                              "is not apply's lock file"),
    "lock file a link": ("out.jsonl",
                         lambda path: (path.with_name("mine.txt").write_text("mine"),
                                       path.with_name(".out.jsonl.lock").symlink_to("mine.txt")),
                         "but it cannot be opened as a file"),
    "damaged parquet": ("out.parquet", lambda path: path.write_bytes(b"PAR1\x00\x01"),
                        "cannot be read as Parquet"),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
@pytest.mark.parametrize("case", list(FOREIGN))
def test_an_output_apply_did_not_write_is_refused_and_left_unchanged(ruler, tmp_path, case,
                                                                     overwrite):
    name, make, message = FOREIGN[case]
    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "Kobe"}])
    work = tmp_path / "work"
    work.mkdir()
    make(work / name)
    before = snapshot(work)
    with pytest.raises(ValueError, match=re.escape(message)):
        run(ruler, source, work / name, writing=OutputSettings(overwrite=overwrite))
    assert snapshot(work) == before and before


def test_the_cli_says_why_it_refuses(ruler, tmp_path):
    from typer.testing import CliRunner

    from spacy_ita.cli import app

    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "Kobe"}])
    (tmp_path / "out.jsonl").write_text('{"id": 1}')
    result = CliRunner().invoke(app, ["apply", ruler, str(source), str(tmp_path / "out.jsonl"),
                                      "--no-context", "--overwrite"])
    assert result.exit_code == 1
    assert "not a row written by `apply`" in result.output and "move this away" in result.output
    assert (tmp_path / "out.jsonl").read_text() == '{"id": 1}'


def test_a_first_line_cut_short_by_a_kill_is_apply_s_own_and_redone(ruler, tmp_path):
    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "Kobe"}, {"text": "Boston"}])
    (tmp_path / "out.jsonl").write_text('{"input_file": "posts.jsonl", "input_r')
    summary = run(ruler, source, tmp_path / "out.jsonl")
    assert (summary.n_written, summary.n_skipped) == (2, 0)
    assert [row["input_row"] for row in read_rows(tmp_path / "out.jsonl")] == [0, 1]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_overwrite_replaces_apply_s_own_output(ruler, tmp_path, suffix):
    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "Kobe"}, {"text": "Boston"}])
    out = tmp_path / f"out.{suffix}"
    run(ruler, source, out)
    write_jsonl(source, [{"text": "Boston"}])
    summary = run(ruler, source, out, writing=OutputSettings(overwrite=True))
    assert (summary.n_written, summary.n_skipped) == (1, 0)
    assert [row["text"] for row in read_rows(out)] == ["Boston"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out." + suffix, "posts.jsonl"]


def _parts_of_a_killed_run(ruler: str, tmp_path: Path) -> ParquetWriter:
    """OUTPUT.parts/ as a run killed after 4 of 6 posts leaves it: two parts."""
    source = write_jsonl(tmp_path / "posts.jsonl",
                         [{"text": text} for text in ("Kobe", "Boston", "x", "y")])
    run(ruler, source, tmp_path / "out.parquet")
    writer = ParquetWriter(tmp_path / "out.parquet", rows_per_part=2)
    writer.done_rows()  # the finished output becomes part 0
    writer.write([Post("posts.jsonl", row, "", carried={"text": "Kobe"}).output_row()
                  for row in (4, 5)])
    writer.stop()
    write_jsonl(source, [{"text": text} for text in ("Kobe", "Boston", "x", "y", "Kobe", "z")])
    return writer


def test_a_damaged_last_part_is_removed_and_its_rows_redone(ruler, tmp_path):
    writer = _parts_of_a_killed_run(ruler, tmp_path)
    last = writer.parts / "part-000001.parquet"
    last.write_bytes(last.read_bytes()[:40])  # cut short, as a crash may leave it
    with pytest.warns(UserWarning, match="part-000001.parquet could not be read .* removed, "
                                         "and its rows are done again"):
        summary = run(ruler, tmp_path / "posts.jsonl", tmp_path / "out.parquet")
    assert (summary.n_written, summary.n_skipped) == (2, 4)
    rows = read_rows(tmp_path / "out.parquet")
    assert [row["input_row"] for row in rows] == list(range(6))
    assert rows[5]["text"] == "z" and not writer.parts.exists()


def test_a_damaged_part_that_is_not_the_last_is_refused(ruler, tmp_path):
    writer = _parts_of_a_killed_run(ruler, tmp_path)
    (writer.parts / "part-000000.parquet").write_bytes(b"PAR1")
    before = snapshot(writer.parts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="not the last part.*Delete it and rerun"):
            run(ruler, tmp_path / "posts.jsonl", tmp_path / "out.parquet")
    assert snapshot(writer.parts) == before


def test_a_partial_line_after_apply_rows_is_cut_whatever_it_begins_with(tmp_path):
    """(The rows of earlier versions began with the carried columns.)"""
    row = Post("a.jsonl", 0, "").output_row()
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(row) + "\n" + '{"id": "not ours, cut')
    done = JsonlWriter(path).done_rows()
    assert done.count == 1 and path.read_text() == json.dumps(row) + "\n"


def test_temporary_files_never_overwrite_a_file_of_the_same_name(tmp_path):
    """The rewrites beside OUTPUT (dropping rows to redo, the final Parquet
    merge) write to fresh temporary names, not to `.OUTPUT.tmp`."""
    rows = [Post("a.jsonl", row, "", carried={"id": row}).output_row() for row in range(3)]
    rows[1]["retryable"] = True
    for name in ("out.jsonl", "out.parquet"):
        mine = tmp_path / f".{name}.tmp"
        mine.write_text("mine")
        writer = open_writer(tmp_path / name)
        writer.done_rows()
        writer.write(rows)
        writer.finish()
        assert open_writer(tmp_path / name).drop_redone() == 1
        assert mine.read_text() == "mine"
        assert [row["id"] for row in read_rows(tmp_path / name)] == [0, 2]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        ".out.jsonl.tmp", ".out.parquet.tmp", "out.jsonl", "out.parquet"]


def test_a_parquet_output_has_a_new_file_s_permissions(tmp_path):
    """Its rewrites went through mkstemp, whose files are 0600: other users of a
    shared folder could not read what apply wrote (a JSONL OUTPUT they could)."""
    umask = os.umask(0o022)
    os.umask(umask)
    writer = open_writer(tmp_path / "out.parquet")
    writer.done_rows()
    writer.write([Post("a.jsonl", 0, "", carried={"id": 0}).output_row()])
    writer.finish()
    assert (tmp_path / "out.parquet").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_a_second_run_on_the_same_output_is_refused_at_once(ruler, tmp_path, monkeypatch,
                                                            suffix):
    """The second run starts while the first is writing its first batch."""
    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "Kobe"}, {"text": "Boston"}])
    out = tmp_path / f"out.{suffix}"
    writer_class = JsonlWriter if suffix == "jsonl" else ParquetWriter
    first_write, refusals = writer_class.write, []

    def write_during_a_second_run(self, rows):
        if not refusals:
            with pytest.raises(ValueError) as refused:
                run(ruler, source, out)
            refusals.append(str(refused.value))
        return first_write(self, rows)

    monkeypatch.setattr(writer_class, "write", write_during_a_second_run)
    summary = run(ruler, source, out, batch_size=1)
    assert refusals == [f"OUTPUT {out} is being written by another apply run (it holds "
                        f"{tmp_path / f'.out.{suffix}.lock'}): wait for that run to end, or "
                        "choose another OUTPUT."]
    assert summary.n_written == 2
    assert [row["input_row"] for row in read_rows(out)] == [0, 1]  # each post once
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"out.{suffix}", "posts.jsonl"]


def test_the_cli_refuses_an_output_another_run_holds_and_takes_over_a_killed_run_s_lock(
        ruler, tmp_path):
    from typer.testing import CliRunner

    from spacy_ita.bulk.outputs import LOCK_TEXT, OutputLock
    from spacy_ita.cli import app

    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "Kobe"}])
    out = tmp_path / "out.jsonl"
    command = ["apply", ruler, str(source), str(out), "--no-context"]
    with OutputLock(out):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1
        assert f"OUTPUT {out} is being written by another apply run" in result.output
        assert not out.exists()
    lock = tmp_path / ".out.jsonl.lock"
    lock.write_bytes(LOCK_TEXT)  # left by a run that was killed: nobody holds it
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert len(read_rows(out)) == 1 and not lock.exists()


def test_the_cli_runs_from_a_thread_other_than_the_main_one(ruler, tmp_path):
    """Only the main thread may take signals: the CLI's SIGTERM handler is
    not installed elsewhere (it made the command fail there)."""
    import threading

    from typer.testing import CliRunner

    from spacy_ita.cli import app

    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "Kobe"}])
    results = []
    thread = threading.Thread(target=lambda: results.append(CliRunner().invoke(
        app, ["apply", ruler, str(source), str(tmp_path / "out.jsonl"), "--no-context"])))
    thread.start()
    thread.join(120)
    assert results and results[0].exit_code == 0, results and results[0].output
    assert len(read_rows(tmp_path / "out.jsonl")) == 1
