"""`apply`'s outputs, after the tenth review: a finished Parquet OUTPUT stays
where and as it is until new rows are merged into it (a failed or killed
rerun left only its parts), a carried column's Parquet type widens as later
values need (a first `[]` nulled every later list), and a run refused at its
start leaves no folders behind.

The pipeline is a blank English one with an entity ruler: the tests are about
files, not about the model.
"""
import decimal
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spacy_ita.bulk import OutputSettings
from spacy_ita.bulk.inputs import Post
from spacy_ita.bulk.outputs import ParquetWriter, open_writer
from apply_files import run, write_jsonl




def posts(n: int):
    return [{"text": f"Kobe in Boston, post {number}"} for number in range(n)]


def finished_output(ruler: str, folder: Path, n: int = 4) -> Path:
    """A Parquet OUTPUT of a run that ended, over `n` posts in posts.jsonl."""
    out = folder / "out.parquet"
    run(ruler, write_jsonl(folder / "posts.jsonl", posts(n)), out)
    return out


def input_rows(out: Path):
    return [row["input_row"] for row in pq.read_table(out).to_pylist()]


# 1. A finished Parquet OUTPUT stays where and as it is.

def test_a_rerun_with_nothing_to_add_leaves_a_finished_parquet_output_as_it_is(ruler,
                                                                               tmp_path):
    """It was moved into its parts folder and merged back: rewritten, for nothing."""
    out = finished_output(ruler, tmp_path)
    before, data = out.stat(), out.read_bytes()
    summary = run(ruler, tmp_path / "posts.jsonl", out)
    assert (summary.n_written, summary.n_skipped) == (0, 4)
    assert (out.stat().st_ino, out.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert out.read_bytes() == data
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.parquet", "posts.jsonl"]


@pytest.mark.parametrize("grown", [False, True], ids=["same input", "grown input"])
def test_a_rerun_that_fails_leaves_the_finished_output_where_it_was(ruler, tmp_path, grown):
    """A pipeline that loads in the preflight (context components only) but
    not in the run: the rerun stopped with OUTPUT moved into OUTPUT.parts/."""
    out = finished_output(ruler, tmp_path)
    data = out.read_bytes()
    broken = tmp_path / "broken"
    shutil.copytree(ruler, broken)
    (broken / "entity_ruler" / "patterns.jsonl").write_text("not JSON\n")
    if grown:
        write_jsonl(tmp_path / "posts.jsonl", posts(6))
    with pytest.raises(ValueError, match="Invalid JSON"):
        run(str(broken), tmp_path / "posts.jsonl", out)
    assert out.read_bytes() == data
    assert not out.with_name("out.parquet.parts").exists()


@pytest.mark.parametrize("killed", ["at the swap", "after the swap"])
def test_a_kill_in_the_final_merge_loses_no_row_and_writes_none_twice(ruler, tmp_path,
                                                                      monkeypatch, killed):
    """The merge of OUTPUT and the new parts goes to a temporary file renamed
    over OUTPUT, then the parts are removed: killed at the rename, OUTPUT is
    as it was and the rerun merges; killed after it, the rerun finds the
    parts already merged and removes them."""
    out = finished_output(ruler, tmp_path)
    data = out.read_bytes()
    write_jsonl(tmp_path / "posts.jsonl", posts(6))
    if killed == "at the swap":
        real_replace = os.replace

        def replace(source, target):
            if Path(target) == Path(os.path.realpath(out)):
                raise KeyboardInterrupt
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
    else:
        def remove_parts(writer):
            raise KeyboardInterrupt

        monkeypatch.setattr(ParquetWriter, "_remove_parts", remove_parts)
    with pytest.raises(KeyboardInterrupt):
        run(ruler, tmp_path / "posts.jsonl", out, writing=OutputSettings(rows_per_part=1))
    monkeypatch.undo()
    assert (out.read_bytes() == data) == (killed == "at the swap")
    summary = run(ruler, tmp_path / "posts.jsonl", out)
    assert (summary.n_written, summary.n_skipped) == (0, 6)
    assert input_rows(out) == list(range(6))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.parquet", "posts.jsonl"]


def test_a_row_redone_after_a_kill_past_the_swap_counts_once(tmp_path, monkeypatch):
    """The parts a run killed after the swap leaves hold rows that OUTPUT holds
    too: a retryable one among them was taken out of both, and counted twice."""
    def row(number, retryable=False):
        return {"input_file": "a.jsonl", "input_row": number, "entities": [],
                "visual_context": None, "view": "text", "image_error": None, "warning": None,
                "knowledge_error": None, "error": "LM down" if retryable else None,
                "retryable": retryable}

    out = tmp_path / "out.parquet"
    writer = open_writer(out, False, rows_per_part=1)
    writer.write([row(0), row(1)])
    writer.finish()
    writer = open_writer(out, False, rows_per_part=1)
    writer.write([row(2, retryable=True)])
    def killed(writer):
        raise KeyboardInterrupt

    monkeypatch.setattr(ParquetWriter, "_remove_parts", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.finish()
    monkeypatch.undo()
    writer = open_writer(out, False, rows_per_part=1)
    assert writer.drop_redone() == 1
    assert writer.done_rows().count == 2  # rows 0 and 1; row 2 is to be redone


# 2. A carried column's Parquet type widens as later values need.

@pytest.mark.parametrize("rows_per_part", [100, 2], ids=["one part", "parts"])
def test_a_carried_column_takes_later_values_its_first_ones_left_room_for(ruler, tmp_path,
                                                                          rows_per_part):
    """A first batch of `[]`, `{"lang": null}` or `{"a": 1}` fixed the column
    as list<null>, struct<lang: null> or struct<a>, and every later list of
    tags, language or new field was left out. An int column still takes no
    5.5 (it would become a float column)."""
    records = [{"text": "Kobe", "tags": [], "meta": {"lang": None}, "extra": {"a": 1}, "n": 1}
               ] * 3 + [{"text": "Boston", "tags": ["nba"], "meta": {"lang": "en"},
                         "extra": {"a": 2, "b": "x"}, "n": 5.5}] * 3
    out = tmp_path / "out.parquet"
    summary = run(ruler, write_jsonl(tmp_path / "posts.jsonl", records), out, batch_size=3,
                  writing=OutputSettings(rows_per_part=rows_per_part))
    rows = pq.read_table(out).to_pylist()
    assert [row["tags"] for row in rows] == [[]] * 3 + [["nba"]] * 3
    assert [row["meta"] for row in rows] == [{"lang": None}] * 3 + [{"lang": "en"}] * 3
    assert [row["extra"] for row in rows] == [{"a": 1, "b": None}] * 3 + [{"a": 2, "b": "x"}] * 3
    assert [row["n"] for row in rows] == [1] * 3 + [None] * 3
    assert summary.n_warnings == 3 and all("column 'n'" in row["warning"] for row in rows[3:])


def test_parquet_decimals_with_more_digits_later_are_kept(ruler, tmp_path):
    """Read from Parquet, a decimal128(7, 2) column reaches the writer as
    Python Decimals, whose first values (1.10) gave decimal128(3, 2): 123.45
    was left out."""
    prices = [decimal.Decimal("1.10")] * 2 + [decimal.Decimal("123.45")] * 2
    pq.write_table(pa.table({"text": ["Kobe"] * 4,
                             "price": pa.array(prices, pa.decimal128(7, 2))}),
                   tmp_path / "posts.parquet")
    summary = run(ruler, tmp_path / "posts.parquet", tmp_path / "out.parquet", batch_size=2,
                  writing=OutputSettings(rows_per_part=2))
    assert summary.n_warnings == 0
    assert [row["price"] for row in pq.read_table(tmp_path / "out.parquet").to_pylist()] == prices


def test_a_resumed_run_widens_the_types_of_the_parts_it_finds(tmp_path):
    """The types learnt from a killed run's parts were fixed as they were:
    after a part of `[]`, the resumed run left out every list of tags."""
    def rows(start, tags):
        return [Post("posts.jsonl", row, "", carried={"tags": tags}).output_row()
                for row in range(start, start + 2)]

    out = tmp_path / "out.parquet"
    killed = open_writer(out)
    killed.done_rows()
    killed.write(rows(0, []))
    killed.stop()
    resumed = open_writer(out)
    assert resumed.done_rows().count == 2
    resumed.write(rows(2, ["nba"]))
    resumed.finish()
    table = pq.read_table(out)
    assert table.column("tags").to_pylist() == [[], [], ["nba"], ["nba"]]
    assert table.column("warning").to_pylist() == [None] * 4


# 3. A run refused at its start leaves no folders.

def test_a_run_refused_before_any_row_leaves_no_folders_it_made(ruler, tmp_path):
    """The lock beside OUTPUT made OUTPUT's folders, and they stayed."""
    source = write_jsonl(tmp_path / "posts.jsonl", posts(1))
    with pytest.raises(ImportError, match="no model"):  # no such folder: taken as a package
        run(str(tmp_path / "no model"), source, tmp_path / "new" / "sub" / "out.jsonl")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["posts.jsonl"]
    run(ruler, source, tmp_path / "new" / "sub" / "out.jsonl")
    assert (tmp_path / "new" / "sub" / "out.jsonl").exists()
