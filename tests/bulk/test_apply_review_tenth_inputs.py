"""`apply`'s inputs, after the tenth review: OUTPUT inside INPUT's folder or
glob is not read back as input; an unreadable Parquet file costs only its own
rows; a text column that no input file has is refused before any row is
written; JSONL lines may end in a lone CR; a CSV header that repeats a name
keeps both columns, as pandas does.

The pipeline is a blank English one with an entity ruler: the tests are about
files, not about the model.
"""
import logging
import multiprocessing
import re
from pathlib import Path
from typing import Optional

import pytest
from typer.testing import CliRunner

from spacy_ita.bulk import Columns, OutputSettings, inputs
from spacy_ita.bulk.inputs import Post, count_rows, find_inputs, read_posts
from spacy_ita.bulk.outputs import open_writer
from spacy_ita.cli import app
from apply_files import read_rows, run, write_jsonl




def run_cli(model: str, source: Path, output: Path, *options: str):
    return CliRunner().invoke(app, ["apply", model, str(source), str(output), "--no-context",
                                    *options])


def in_a_forked_child(*args, seconds: float = 60, **kwargs) -> Optional[int]:
    """The exit code of `run` in a forked child, or None when it had not ended
    after `seconds` (it is killed then): a run that reads back the JSONL it
    appends to never ends."""
    child = multiprocessing.get_context("fork").Process(target=run, args=args, kwargs=kwargs)
    child.start()
    child.join(seconds)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return child.exitcode


def where_from(rows):
    return sorted((row["input_file"], row["input_row"]) for row in rows)


def counted_as_read(folder: Path) -> None:
    """Each file's rows are counted as its reader reads them: the progress bar
    and the Ray engine's search for unfinished files rely on it."""
    for item in find_inputs(str(folder)):
        assert count_rows(item) == len(list(read_posts([item], Columns()))), item.name


# 1. OUTPUT in INPUT's folder or glob: a JSONL rerun read the OUTPUT it
# appended to, for ever; a Parquet rerun failed on the OUTPUT it had just moved
# into its parts folder, and the next read that part as input.

@pytest.mark.parametrize("spec, suffix", [("posts", "jsonl"), ("posts/*.jsonl", "jsonl"),
                                          ("posts", "parquet")])
def test_output_in_the_input_folder_or_glob_is_not_read_back(ruler, tmp_path, caplog, spec,
                                                             suffix):
    folder = tmp_path / "posts"
    folder.mkdir()
    write_jsonl(folder / "in.jsonl", [{"id": i, "text": f"Kobe in Boston {i}"} for i in range(20)])
    out, source = folder / f"out.{suffix}", str(tmp_path / spec)
    assert run(ruler, source, out, batch_size=4).n_written == 20
    for _ in range(2):  # the second rerun read what the first left in the parts folder
        assert in_a_forked_child(ruler, source, out, batch_size=4) == 0
    with caplog.at_level(logging.WARNING, logger="spacy_ita.bulk.inputs"):
        summary = run(ruler, source, out)
    assert (summary.n_written, summary.n_skipped) == (0, 20)
    assert where_from(read_rows(out)) == [("in.jsonl", row) for row in range(20)]
    assert (f"1 input file(s) are OUTPUT {out} or its parts, which apply writes: not read as "
            f"input (the first: {out})") in caplog.text


def test_the_parts_a_killed_parquet_run_left_in_the_input_folder_are_not_read(ruler, tmp_path):
    folder = tmp_path / "posts"
    folder.mkdir()
    write_jsonl(folder / "in.jsonl", [{"id": i, "text": f"Kobe in Boston {i}"} for i in range(20)])
    out = folder / "out.parquet"
    writer = open_writer(out, rows_per_part=5)
    writer.done_rows()
    writer.write([Post("in.jsonl", row, "", carried={"id": row}).output_row()
                  for row in range(10)])
    writer.stop()  # as a killed run leaves it: parts, no OUTPUT
    # A link into the parts folder is a part too, by its real path.
    (folder / "link.parquet").symlink_to(folder / "out.parquet.parts" / "part-000000.parquet")
    summary = run(ruler, folder, out)
    assert (summary.n_written, summary.n_skipped) == (10, 10)
    assert where_from(read_rows(out)) == [("in.jsonl", row) for row in range(20)]


def test_input_that_is_output_is_refused(ruler, tmp_path):
    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": "Kobe in Boston"}] * 3)
    out = tmp_path / "out.jsonl"
    run(ruler, source, out)
    assert in_a_forked_child(ruler, out, out) == 1  # refused, not reading its own rows
    with pytest.raises(ValueError, match=re.escape(f"INPUT holds nothing but OUTPUT {out}")):
        run(ruler, out, out)
    assert len(read_rows(out)) == 3


# 2. One unreadable Parquet file stopped the run, naming no file.

def damaged_parquet(path: Path) -> Path:
    """300 rows in 3 row groups, small pages; the length of row 150's text
    (in the middle of row group 1) overwritten, as a bad disk block would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": list(range(300)),
                      "text": [f"Post {row} from Boston " + "x" * 40 for row in range(300)]})
    pq.write_table(table, path, row_group_size=100, compression="NONE", data_page_size=1000,
                   use_dictionary=False)
    data = bytearray(path.read_bytes())
    start = data.index(b"Post 150 ")
    data[start - 4:start] = b"\xff" * 4
    path.write_bytes(bytes(data))
    return path


def test_an_unreadable_parquet_file_costs_only_its_own_rows(ruler, tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "PARQUET_READ_ROWS", 10)  # batches smaller than a row group
    folder = tmp_path / "posts"
    folder.mkdir()
    for name in ("a.jsonl", "d.jsonl"):
        write_jsonl(folder / name, [{"text": f"Kobe {row}"} for row in range(3)])
    (folder / "b.parquet").write_bytes(b"")  # as a writer that crashed leaves it
    damaged_parquet(folder / "c.parquet")
    out = tmp_path / "out.jsonl"
    summary = run(ruler, folder, out, batch_size=16)
    rows = {(row["input_file"], row["input_row"]): row for row in read_rows(out)}
    assert summary.n_written == len(rows) == 3 + 1 + 300 + 3
    assert all(rows[name, row]["error"] is None for name in ("a.jsonl", "d.jsonl")
               for row in range(3))
    assert "b.parquet: cannot be read as Parquet (ArrowInvalid: Parquet file size is 0 bytes)" \
        in rows["b.parquet", 0]["error"]
    lost = [row for row in range(300) if rows["c.parquet", row]["error"] is not None]
    assert 100 < lost[0] <= 150 and lost == list(range(lost[0], 200))  # read up to the damage
    assert (f"c.parquet, row {lost[0] + 1}: cannot be read: the file is damaged in row group 1, "
            f"rows {lost[0] + 1} to 200") in rows["c.parquet", lost[0]]["error"]
    assert [rows["c.parquet", row]["id"] for row in (0, lost[0] - 1, 200, 299)] == \
        [0, lost[0] - 1, 200, 299]
    assert summary.n_errors == 1 + len(lost)
    counted_as_read(folder)
    again = run(ruler, folder, out)  # the error rows count as done
    assert (again.n_written, again.n_skipped) == (0, len(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["Kobe", "Boston"]}), folder / "b.parquet")
    redone = run(ruler, folder, out, writing=OutputSettings(retry_errors=True))
    assert (redone.n_redone, redone.n_written) == (1 + len(lost), 2 + len(lost))
    b_rows = [row for row in read_rows(out) if row["input_file"] == "b.parquet"]
    assert [(row["text"], row["error"]) for row in b_rows] == [("Kobe", None), ("Boston", None)]


# 3. A wrong --text-column made every row a final error: the corrected rerun
# skipped them all as done.

def test_a_text_column_that_no_input_file_has_is_refused_before_any_row(ruler, tmp_path):
    folder = tmp_path / "posts"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"id": 1, "body": "Kobe in Boston"}, {"id": 2, "body": "hi"}])
    (folder / "b.csv").write_text("id,body\n3,Boston again\n")
    out = tmp_path / "out.jsonl"
    result = run_cli(ruler, folder, out)
    assert result.exit_code == 1
    assert (f"Error: no input file has the text column 'text' in its first rows: "
            f"{folder / 'a.jsonl'} has 'id', 'body'") in result.output
    assert "--text-column" in result.output and not out.exists()
    result = run_cli(ruler, folder, out, "--text-column", "body")
    assert result.exit_code == 0 and "Wrote 3 posts" in result.output, result.output
    assert [len(row["entities"]) for row in read_rows(out)] == [2, 0, 1]


def test_rows_without_the_text_column_in_files_that_have_it_stay_error_rows(ruler, tmp_path):
    folder = tmp_path / "posts"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"body": "Boston"}, {"body": "Kobe"}])
    write_jsonl(folder / "b.jsonl", [{"body": "Boston"}, {"text": "Kobe"}])
    summary = run(ruler, folder, tmp_path / "out.jsonl")
    assert (summary.n_written, summary.n_errors) == (4, 3)


def test_a_csv_whose_header_has_the_text_column_is_not_refused(ruler, tmp_path):
    """Its first rows may all be error rows (a field too many): the column is
    there, and the later good row is tagged."""
    folder = tmp_path / "posts"
    folder.mkdir()
    write_jsonl(folder / "b.jsonl", [{"note": "a readme row"}])
    (folder / "a.csv").write_text("id,text\n" + "1,x,extra\n" * 100 + "2,Kobe in Boston\n")
    summary = run(ruler, folder, tmp_path / "out.jsonl")
    assert (summary.n_written, summary.n_errors) == (102, 101)


def test_a_parquet_file_whose_schema_has_the_text_column_is_not_refused(tmp_path, monkeypatch):
    """Even when its first rows cannot be read (a damaged page)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["Kobe in Boston"]}), tmp_path / "a.parquet")
    write_jsonl(tmp_path / "b.jsonl", [{"note": "a readme row"}])
    monkeypatch.setitem(inputs.READERS, "parquet", lambda path: iter(
        [(0, str(path), {}, "cannot be read: the file is damaged", None)]))
    inputs.check_text_column(find_inputs(str(tmp_path)), Columns())


def test_a_parquet_cell_python_cannot_hold_costs_only_that_cell(ruler, tmp_path):
    """A timestamp in the year 11476 raised OverflowError out of the reader:
    the run stopped before any row, the other files too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "posts"
    folder.mkdir()
    when = pa.array([0, 300_000_000_000_000], type=pa.timestamp("ms"))
    pq.write_table(pa.table({"text": ["Kobe in Boston", "Boston, later"], "when": when}),
                   folder / "a.parquet")
    write_jsonl(folder / "b.jsonl", [{"text": "Kobe"}])
    out = tmp_path / "out.jsonl"
    summary = run(ruler, folder, out)
    assert (summary.n_written, summary.n_errors) == (3, 0)
    rows = {(row["input_file"], row["input_row"]): row for row in read_rows(out)}
    assert rows[("a.parquet", 0)]["when"] is not None
    late = rows[("a.parquet", 1)]
    assert late["when"] is None and len(late["entities"]) == 1
    assert "column 'when': cannot be read (OverflowError" in late["warning"]


def test_every_row_failing_says_how_to_redo_them(ruler, tmp_path):
    source = write_jsonl(tmp_path / "posts.jsonl", [{"text": None}, {"text": 42}])
    result = run_cli(ruler, source, tmp_path / "out.jsonl")
    assert result.exit_code == 1 and "Error: every row failed" in result.output
    assert "add --retry-errors to redo every row with an error" in result.output


# 4. JSONL with lone CR line ends: three posts read as one error row.

def test_jsonl_lines_may_end_in_a_lone_cr(ruler, tmp_path):
    source = tmp_path / "posts.jsonl"
    source.write_bytes(b'{"id": 0, "text": "Kobe"}\r{"id": 1, "text": "in Boston"}\r\r\n'
                       b'{"id": 2, "text": "a\\rb"}\r\n{"id": 3, "text": \r')
    summary = run(ruler, source, tmp_path / "out.jsonl")
    rows = read_rows(tmp_path / "out.jsonl")
    assert summary.n_written == 4 and [row.get("id") for row in rows] == [0, 1, 2, None]
    assert rows[2]["text"] == "a\rb" and [row["error"] for row in rows[:3]] == [None] * 3
    assert f"{source}, line 5: invalid JSON" in rows[3]["error"]  # CR, CR, (blank) CRLF, CRLF
    counted_as_read(tmp_path)


# 5. A CSV header that repeats a name kept only the last column's value.

def test_a_csv_header_that_repeats_a_name_keeps_every_column_as_pandas_does(ruler, tmp_path):
    import pandas

    source = tmp_path / "posts.csv"
    source.write_text("id,text,id,id.1,id\n1,Kobe in Boston,2,3,4\n")
    summary = run(ruler, source, tmp_path / "out.jsonl")
    row = read_rows(tmp_path / "out.jsonl")[0]
    carried = list(row)[2:list(row).index("entities")]
    assert carried == list(pandas.read_csv(source).columns) == ["id", "text", "id.2", "id.1",
                                                                "id.3"]
    assert [row[name] for name in carried] == ["1", "Kobe in Boston", "2", "3", "4"]
    assert summary.n_warnings == 1 and row["error"] is None
    assert (f"{source}, row 1 (line 2): the header repeats a column name: column 3 'id' is read "
            "as 'id.2', column 5 'id' is read as 'id.3'") == row["warning"]


def test_a_header_of_many_repeated_names_is_renamed_in_linear_time():
    """A header of 2,000 `a` took 16 s to rename (every name searched the list
    of names so far, number after number), 20,000 about four hours; now milliseconds."""
    child = multiprocessing.get_context("fork").Process(
        target=inputs.unique_names, args=(["a"] * 20_000,))
    child.start()
    child.join(30)
    finished = not child.is_alive()
    child.kill()
    assert finished and child.exitcode == 0
    assert inputs.unique_names(["a"] * 4) == ["a", "a.1", "a.2", "a.3"]
