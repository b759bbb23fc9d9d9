"""Output of `apply`: JSONL or Parquet, written so that a killed run resumes,
no row can stop it, and nothing that apply did not write is touched.

Each row carries its `input_file` and `input_row`. On start a writer reads the
rows already in the output (`done_rows`) and the run skips them, so every post
is written exactly once however often the run is killed and restarted.

- An existing OUTPUT is resumed (or removed by --overwrite) only when it is
  apply's own: JSONL rows and Parquet files hold all of OWN_COLUMNS, and the
  Parquet parts folder holds PARTS_MARKER (written first) and part files only.
  Anything else is refused, and left as it is.
- JSONL is appended to in place, one flush per batch. A kill can leave a
  half-written last line; the next run cuts it off (that row is redone).
- A row written with `retryable` true (a failure that may pass: the LM
  down, a timeout, the cache) is taken out of the output when the next run
  starts (`drop_redone`, which rewrites the files that hold one), so that run
  does it again and each post is still in the output once; `retry_errors`
  takes out every row with an error.
- Parquet cannot be appended to, so the rows go into part files in
  `OUTPUT.parts/` (each written to a temporary name, synced, then renamed), at
  most `rows_per_part` rows or `part_seconds` of work each; at the end OUTPUT
  (left as it is till then) and the parts are merged, a batch in memory at a
  time, into a file that replaces OUTPUT. A last part that cannot be read is
  removed, and its rows redone. A carried column's type is the first its
  values give, widened where later values need (a first `[]` leaves a list
  of anything).
- One run at a time writes OUTPUT: `OutputLock` holds an flock on
  `.OUTPUT.lock` beside it for the whole run, and a second run is refused.
- A row that cannot be written (lone surrogates: half an emoji) has them
  replaced by U+FFFD, with a warning in the row; a row that still cannot be
  written is written with its error instead of its results.
"""
import base64
import datetime
import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from ..files import replacing
from .inputs import DoneRows, join_warnings, repair_columns, require_pyarrow, surrogates_warning

# The columns that make a row or a Parquet file recognisably apply's: every
# version of apply wrote them (`warning` came later).
OWN_COLUMNS = ("input_file", "input_row", "entities", "visual_context", "view", "image_error",
               "error")
# How every JSONL row apply writes begins (Post.output_row puts input_file first).
ROW_START = b'{"input_file": '
# Written first into OUTPUT.parts/: the folder is apply's to resume and remove.
PARTS_MARKER = "_spacy_ita_apply.json"
# What apply writes in the lock file beside OUTPUT (OutputLock).
LOCK_TEXT = b"spacy_ita apply: the lock of a run writing OUTPUT\n"
# The most of a lock file read: a note of a batch of ~1 million posts.
MAX_LOCK_BYTES = 64 << 20
# How much of its first line tells whether a JSONL file is apply's.
CHECKED_BYTES = 1 << 20
# A part, or one being written (`replacing`; earlier versions: `.part-N.parquet[.X].tmp`).
PART_FILE = re.compile(r"part-\d{6}\.parquet|\.part-\d{6}\.parquet(\.\w+)?\.tmp(-\w+)?")
Row = Dict[str, Any]


def refusal(what: str, why: str) -> ValueError:
    """The error for an OUTPUT that apply will not resume or overwrite."""
    return ValueError(f"{what} {why}. apply resumes and overwrites only its own output, so it "
                      "leaves this as it is: choose another OUTPUT, or move this away.")


class JsonlWriter:
    def __init__(self, path: Path):
        self.path = path
        self.file = None

    def check_own(self) -> None:
        """Refuse a file whose first line (blank ones aside) is not a row apply
        writes, or the beginning of one."""
        if not self.path.exists():
            return
        with open(self.path, "rb") as file:
            for number, line in enumerate(iter(lambda: file.readline(CHECKED_BYTES), b""), 1):
                if not line.endswith(b"\n"):  # cut short, or longer than CHECKED_BYTES
                    if not _row_start(line):
                        raise _partial_line_refusal(self.path, number)
                    return
                if line.strip():
                    _own_row(line, self.path, number)
                    return

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def done_rows(self) -> DoneRows:
        """The rows in the file. A partial last line (a kill mid-write) is cut
        off, if it follows apply's rows or begins as they do."""
        done = DoneRows()
        if not self.path.exists():
            return done
        complete = 0
        with open(self.path, "rb") as file:
            for number, line in enumerate(file, start=1):
                if not line.endswith(b"\n"):
                    if not done.count and not _row_start(line):
                        raise _partial_line_refusal(self.path, number)
                    break
                complete += len(line)
                if line.strip():
                    row = _own_row(line, self.path, number)
                    done.add(row["input_file"], row["input_row"])
        if complete < self.path.stat().st_size:
            os.truncate(self.path, complete)
        return done

    def write(self, rows: List[Row]) -> List[Row]:
        """Append `rows`; the rows as written (see `writable`)."""
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "ab")
        lines, written = [], []
        for row in rows:
            row, line = writable(row, _json_line, self.path)
            lines.append(line)
            written.append(row)
        self.file.write(b"".join(lines))
        self.file.flush()
        return written

    def finish(self) -> None:
        if self.file is not None:
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None

    stop = finish  # every written row is already in the file

    def drop_redone(self, retry_errors: bool = False) -> int:
        """Take the rows to be redone (see `is_redone`) out of the file; their
        number. The file is rewritten (to a temporary file, then renamed) only
        when it holds one."""
        markers = REDONE_MARKERS[retry_errors]

        def redone(line: bytes) -> bool:  # the bytes first: most lines have no mark
            return (line.endswith(b"\n") and any(marker in line for marker in markers)
                    and is_redone(_json_or_none(line), retry_errors))

        if not self.path.exists():
            return 0
        with open(self.path, "rb") as file:
            dropped = sum(map(redone, file))
        if dropped:
            with open(self.path, "rb") as source, replacing(self.path) as tmp, \
                    open(tmp, "wb") as kept:
                kept.writelines(line for line in source if not redone(line))
        return dropped


def _json_line(row: Row) -> bytes:
    return json.dumps(row, ensure_ascii=False, default=_json_value).encode("utf8") + b"\n"


def _row_start(line: bytes) -> bool:
    """Whether a line begins as apply's rows do (or is a beginning of that)."""
    return line[:len(ROW_START)] == ROW_START[:len(line)]


def _partial_line_refusal(path: Path, number: int) -> ValueError:
    return refusal(f"{path}, line {number}:", "not a row written by `apply` (it has no final "
                   "newline, and it does not begin as apply's rows do)")


def _own_row(line: bytes, path: Path, number: int) -> Row:
    """The row on a line, or the refusal of a line that apply did not write."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        row = None
    if not isinstance(row, dict):
        problem = "it is not a JSON object"
    elif any(name not in row for name in OWN_COLUMNS):
        problem = f"it has no {', '.join(name for name in OWN_COLUMNS if name not in row)}"
    elif not (isinstance(row["input_file"], str) and isinstance(row["input_row"], int)):
        problem = "its input_file and input_row are not a file name and a row number"
    else:
        return row
    raise refusal(f"{path}, line {number}:", f"not a row written by `apply` ({problem})")


def writable(row: Row, encode: Callable[[Row], Any], path: Path) -> Tuple[Row, Any]:
    """`row` as it can be written, and `encode(row)`. A row that cannot be
    encoded has its lone surrogates replaced by U+FFFD (with a warning); one
    that still cannot keeps only where it came from, and the reason as its error."""
    try:
        return row, encode(row)
    except Exception as err:  # noqa: BLE001  (no row may stop the run)
        problem = err
    repaired = without_surrogates(row)
    if repaired.get("warning") != row.get("warning"):
        try:
            return repaired, encode(repaired)
        except Exception as err:  # noqa: BLE001
            problem = err
    failed, _ = repair_columns({
        "input_file": repaired["input_file"], "input_row": repaired["input_row"],
        "entities": [], "visual_context": None, "view": None, "image_error": None,
        "warning": repaired.get("warning"),
        "error": f"the row could not be written to {path} ({type(problem).__name__}: "
                 f"{problem}); only where it came from is kept"})
    return failed, encode(failed)


def without_surrogates(row: Row) -> Row:
    """`row` with its lone surrogates replaced by U+FFFD, and a warning that
    names the columns that had some."""
    repaired, names = repair_columns(row)
    if names:
        repaired["warning"] = join_warnings(repaired.get("warning"), surrogates_warning(names))
    return repaired


# Rows `apply` writes to redo have `"retryable": true` (or, with retry_errors,
# an error column set); a JSONL line without these bytes holds none.
ERROR_COLUMNS = ("error", "image_error", "knowledge_error")
REDONE_MARKERS = {False: (b'"retryable": true',),
                  True: (b'"retryable": true', b'error": "')}


def is_redone(row: Optional[Dict[str, Any]], retry_errors: bool = False) -> bool:
    """Whether a written row is to be done again by the next run: it failed for
    a reason that may pass (`retryable`), or it has any error and
    `retry_errors` is set. A row `apply` did not write (no `input_row`) never is."""
    if row is None or "input_row" not in row:
        return False
    return bool(row.get("retryable")) or (
        retry_errors and any(row.get(name) is not None for name in ERROR_COLUMNS))


def _json_or_none(line: bytes) -> Optional[Dict[str, Any]]:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _json_value(value: Any) -> Any:
    """JSON for what Parquet cells may hold beyond JSON's own types."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return str(value)


class ParquetWriter:
    def __init__(self, path: Path, rows_per_part: int = 20_000, part_seconds: float = 60.0):
        require_pyarrow()
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        self.rows_per_part = rows_per_part
        self.part_seconds = part_seconds
        self.buffer: List[Row] = []
        self.buffer_since = time.monotonic()
        self.types: Dict[str, Any] = {}  # carried column -> its Arrow type in this output

    def check_own(self) -> None:
        """Refuse an OUTPUT file or parts folder that apply did not write."""
        if self.path.exists():
            _check_own_parquet(self.path)
        if self.parts.exists() or self.parts.is_symlink():
            _check_own_parts(self.parts)

    def remove(self) -> None:
        if self.path.exists():
            self.path.unlink()
        self._remove_parts()

    def done_rows(self) -> DoneRows:
        """The rows in OUTPUT and its parts; OUTPUT stays where it is, as it
        is, until `finish` merges new parts into it. A part whose rows are all
        there already was merged into OUTPUT by a run killed before it removed
        the parts: it is removed. A last part that cannot be read (cut short
        by a crash) is removed, its rows redone."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        done = DoneRows()
        parts = self._part_files()
        for path in ([self.path] if self.path.exists() else []) + parts:
            try:
                table = pq.read_table(path, columns=["input_file", "input_row"])
                self._learn_types(pq.read_schema(path))
            except (pa.ArrowException, OSError) as err:
                self._drop_damaged(path, path in parts[-1:], err)
                continue
            keys = zip(table["input_file"].to_pylist(), table["input_row"].to_pylist())
            added = [done.add(file_name, row) for file_name, row in keys]
            if path != self.path and not any(added):
                path.unlink()
        return done

    def _drop_damaged(self, part: Path, last: bool, err: Exception) -> None:
        """Remove the last part when it cannot be read; refuse OUTPUT or any other part."""
        if not last:
            what = "it is OUTPUT" if part == self.path else "it is not the last part"
            raise ValueError(f"{part} cannot be read ({err}), and {what}, so no crash of apply "
                             "explains it. Delete it and rerun to redo its rows.")
        part.unlink()
        warnings.warn(f"{part} could not be read ({err}): a crash cut it short. It is "
                      "removed, and its rows are done again.", stacklevel=2)

    def _make_parts_folder(self) -> None:
        """OUTPUT.parts/, with its marker written before any part."""
        self.parts.mkdir(parents=True, exist_ok=True)
        marker = self.parts / PARTS_MARKER
        if not marker.exists():
            marker.write_text(json.dumps({"written_by": "spacy_ita apply",
                                          "output": self.path.name}) + "\n")

    def _remove_parts(self) -> None:
        """Delete OUTPUT.parts/, its marker last: a kill midway leaves a
        folder that is still recognisably apply's."""
        if not self.parts.exists():
            return
        for entry in self.parts.iterdir():
            if entry.name != PARTS_MARKER:
                entry.unlink()
        (self.parts / PARTS_MARKER).unlink(missing_ok=True)
        self.parts.rmdir()

    def _part_files(self) -> List[Path]:
        if not self.parts.exists():
            return []
        for stale in self.parts.glob(".*.tmp*"):
            stale.unlink()
        return sorted(self.parts.glob("part-*.parquet"))

    def write(self, rows: List[Row]) -> List[Row]:
        """Buffer `rows`, writing a part when enough are; the rows as they will
        be written (see `writable`)."""
        rows = self._writable(rows)
        self.buffer.extend(rows)
        if (len(self.buffer) >= self.rows_per_part
                or time.monotonic() - self.buffer_since >= self.part_seconds):
            self.flush()
        return rows

    def _writable(self, rows: List[Row]) -> List[Row]:
        """`rows` as they can be written. When the batch as a whole cannot be:
        lone surrogates repaired, each carried cell that Parquet cannot hold
        or that does not fit its column's type left out (see `fit_types`),
        then the rows tried one by one (see `writable`). The types the batch
        gives new columns become theirs for the rest of the output."""
        try:
            table = rows_to_table(rows, self.types)
        except ValueError:
            # Repair and fit cells first, so that one cell Parquet cannot hold
            # costs only that cell, not the row's results.
            rows = fit_types([without_surrogates(row) for row in rows], self.types)
            rows = [writable(row, lambda one: rows_to_table([one], self.types), self.path)[0]
                    for row in rows]
            table = rows_to_table(rows, self.types)
        self._learn_types(table.schema)
        return rows

    def _learn_types(self, schema) -> None:
        """Take the type `schema` gives each carried column as its type in this
        output when the column has none yet, or when it widens the one it has
        (see `_widened`): a first `[]` fixes nothing but that it is a list."""
        import pyarrow as pa

        fixed = result_schema()
        for field in schema:
            if field.name in fixed or pa.types.is_null(field.type):
                continue
            known = self.types.get(field.name)
            widened = field.type if known is None else _widened(known, field.type)
            if widened is not None:
                self.types[field.name] = widened

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if self.buffer:
            self._make_parts_folder()
            existing = self._part_files()
            # From 1: in the merge, OUTPUT comes first (earlier versions moved it to part 0).
            number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 1
            with replacing(self.parts / _part_name(number)) as tmp:
                pq.write_table(rows_to_table(self.buffer, self.types), tmp)
            self.buffer = []
        self.buffer_since = time.monotonic()

    def stop(self) -> None:
        """Keep what is buffered, as a part, for the next run."""
        self.flush()

    def finish(self) -> None:
        """Write what is buffered; then, if there are parts, merge OUTPUT and
        them, a batch in memory at a time, into a temporary file that replaces
        OUTPUT, and remove the parts. A kill before the swap leaves OUTPUT as
        it was, and the parts; one after it, parts that `done_rows` finds merged."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush()
        parts = self._part_files()
        if not parts:
            self._remove_parts()  # a marker alone: the parts were found merged, or damaged
            return
        files = ([self.path] if self.path.exists() else []) + parts
        try:
            schema = _unified([pq.read_schema(path) for path in files])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"{self.path} and its parts disagree on a column's type: {err}. "
                             "Keep such columns out (--keep) or write JSONL.") from None
        with replacing(self.path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            for path in files:
                with pq.ParquetFile(path) as source:
                    for batch in source.iter_batches():
                        table = pa.Table.from_batches([batch])
                        for name in schema.names:
                            if name not in table.column_names:
                                table = table.append_column(name, pa.nulls(
                                    len(table), schema.field(name).type))
                        writer.write_table(table.select(schema.names).cast(schema))
        self._remove_parts()

    def drop_redone(self, retry_errors: bool = False) -> int:
        """Take the rows to be redone (see `is_redone`) out of OUTPUT and its
        parts; their number. Each file that holds one is rewritten batch by
        batch to a temporary file, then renamed. A row counts once, also when a
        run killed after its final swap left it in a part too."""
        files = ([self.path] if self.path.exists() else []) + self._part_files()
        return len(set().union(*(_drop_parquet_rows(path, retry_errors) for path in files)))


def _check_own_parquet(path: Path) -> None:
    """Refuse a Parquet OUTPUT that cannot be read or that apply did not write."""
    pa = require_pyarrow()
    try:
        names = pa.parquet.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"OUTPUT {path} cannot be read as Parquet ({err}), so it cannot be "
                         "resumed, and apply does not remove a file it cannot tell as its "
                         "own. If it is an apply output cut short, delete it and rerun.") from None
    missing = [name for name in OWN_COLUMNS if name not in names]
    if missing:
        raise refusal(f"OUTPUT {path}", f"is not an apply output (it has no {', '.join(missing)})")


def _check_own_parts(folder: Path) -> None:
    """Refuse a parts folder that apply did not make: one without its marker
    (unless empty), or with files apply does not write there."""
    if folder.is_symlink() or not folder.is_dir():
        raise refusal(str(folder), "is where apply keeps its parts, but it is not a folder")
    entries = list(folder.iterdir())
    if entries and not (folder / PARTS_MARKER).is_file():
        raise refusal(str(folder), f"has no {PARTS_MARKER}, the file apply writes first in the "
                      "folder of its parts")
    strays = sorted(entry.name for entry in entries if entry.name != PARTS_MARKER and not (
        entry.is_file() and PART_FILE.fullmatch(entry.name)))
    if strays:
        raise refusal(str(folder), f"holds what apply does not write there: {', '.join(strays)}")


def _drop_parquet_rows(path: Path, retry_errors: bool) -> Set[Tuple[Any, Any]]:
    """Rewrite one Parquet file without its rows to be redone; their (input_file,
    input_row). A file that cannot be read is left to `done_rows`, which redoes
    or refuses it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        return set()
    flags = [name for name in ("input_file", "input_row", "retryable", *ERROR_COLUMNS)
             if name in source.schema_arrow.names]
    rows = source.read(columns=flags).to_pylist()
    keep = [not is_redone(row, retry_errors) for row in rows]
    if all(keep):
        return set()
    start = 0
    with replacing(path) as tmp, pq.ParquetWriter(tmp, source.schema_arrow) as writer:
        for batch in source.iter_batches():
            writer.write_batch(batch.filter(pa.array(keep[start:start + len(batch)])))
            start += len(batch)
    return {(row.get("input_file"), row["input_row"])
            for row, kept in zip(rows, keep) if not kept}


def _part_name(number: int) -> str:
    return f"part-{number:06d}.parquet"


def result_schema() -> Dict[str, Any]:
    """Arrow types of the columns `apply` writes, the same in every part."""
    import pyarrow as pa

    texts = pa.list_(pa.string())
    entity = pa.struct([("text", pa.string()), ("label", pa.string()),
                        ("start_char", pa.int64()), ("end_char", pa.int64())])
    context = pa.struct([("object_tags", texts), ("captions", texts), ("ocr_text", texts),
                         ("knowledge", texts)])
    return {"input_file": pa.string(), "input_row": pa.int64(), "entities": pa.list_(entity),
            "visual_context": context, "view": pa.string(), "image_error": pa.string(),
            "warning": pa.string(), "knowledge_error": pa.string(), "error": pa.string(),
            "retryable": pa.bool_()}


def rows_to_table(rows: List[Row], types: Optional[Dict[str, Any]] = None):
    """An Arrow table of output rows: result columns with fixed types, carried
    columns with the types their values have, each within its type in
    `types`, if any (see `_column_type`)."""
    import pyarrow as pa

    fixed = result_schema()
    names: Dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    arrays = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            type_ = fixed.get(name) or _column_type(values, (types or {}).get(name))
            arrays[name] = pa.array(values, type=type_)
        except (pa.ArrowException, OverflowError) as err:
            raise ValueError(f"column {name!r} cannot be written to Parquet: {err}") from None
    return pa.table(arrays)


def fit_types(rows: List[Row], types: Dict[str, Any]) -> List[Row]:
    """`rows` with each carried cell that Parquet cannot hold, or that does not
    fit its column's type (in `types`, else that of the column's first values
    Parquet can hold, widened as later values need, see `_column_type`), left
    out (null), with a warning: Parquet holds one type a column, JSONL would
    keep the value."""
    import pyarrow as pa

    fixed = result_schema()
    names = dict.fromkeys(name for row in rows for name in row if name not in fixed)
    for name in names:
        target = types.get(name)
        try:
            _column_type([row.get(name) for row in rows], target)
            continue
        except pa.ArrowTypeError:
            pass
        for row in rows:
            value = row.get(name)
            try:
                target = _column_type([value], target)
            except pa.ArrowTypeError:
                row[name] = None
                row["warning"] = join_warnings(row.get("warning"), (
                    f"column {name!r}: {_misfit(value, target)}; left out (null)"))
    return rows


def _misfit(value: Any, target) -> str:
    """Why a cell cannot be written to a column of Arrow type `target`."""
    problem = _parquet_problem(value)
    if problem is not None:
        return f"Parquet cannot hold this {type(value).__name__} ({problem})"
    return (f"a {type(value).__name__} does not fit the column's type in this Parquet output "
            f"({target})")


def _column_type(values: List[Any], known=None):
    """The Arrow type of a carried column for `values`: their own when the
    column has none yet (`known` None), else `known` or a widening of it that
    holds them as they are (see `_widened`). ArrowTypeError when there is
    none, or Parquet cannot hold it (an empty object `{}`)."""
    import pyarrow as pa

    try:
        own = pa.array(values).type
    except (pa.ArrowException, OverflowError, ValueError, TypeError) as err:
        raise pa.ArrowTypeError(f"values Parquet cannot hold as one column ({err})") from None
    type_ = own if known is None else _widened(known, own)
    if type_ is None:
        raise pa.ArrowTypeError(f"values that are not all of type {known}")
    if _has_empty_struct(type_):
        raise pa.ArrowTypeError("values Parquet cannot hold (an empty object {})")
    return type_


def _widened(known, own):
    """The type that holds values of types `known` and `own` as they are,
    merged as `_unified` merges the parts (no struct field is dropped):
    `known`, or `known` filled in where it left room (see `_widens`); None
    when there is none (an int column takes no 5.5: as floats, its large
    ints would change)."""
    import pyarrow as pa

    try:
        merged = _unified([pa.schema([("value", known)]), pa.schema([("value", own)])])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    merged = merged.field("value").type
    return merged if _widens(known, merged) else None


def _widens(narrow, wide) -> bool:
    """Whether Arrow type `wide` holds every value of `narrow` as it is: the
    same type, or one where `narrow` has a null (the `[]` or `{"lang": null}`
    of a first batch), fewer decimal digits on either side of the point, or
    fewer struct fields."""
    import pyarrow as pa

    if narrow == wide or pa.types.is_null(narrow):
        return True
    if pa.types.is_decimal(narrow) and pa.types.is_decimal(wide):
        return (wide.scale >= narrow.scale
                and wide.precision - wide.scale >= narrow.precision - narrow.scale)
    if (pa.types.is_list(narrow) and pa.types.is_list(wide)) or (
            pa.types.is_large_list(narrow) and pa.types.is_large_list(wide)):
        return _widens(narrow.value_type, wide.value_type)
    if pa.types.is_struct(narrow) and pa.types.is_struct(wide):
        return all(wide.get_field_index(field.name) >= 0
                   and _widens(field.type, wide.field(field.name).type) for field in narrow)
    return False


def _unified(schemas):
    """One schema for Arrow `schemas`, each column's types merged as Arrow's
    permissive promotion does; ArrowInvalid or ArrowTypeError when they cannot be."""
    import pyarrow as pa

    return pa.unify_schemas(schemas, promote_options="permissive")


def _parquet_problem(value: Any) -> Optional[str]:
    """Why Parquet cannot hold `value` in any column (None: it can): Arrow
    has no type for it (an int beyond 64 bits), or an empty object `{}` is
    in it (a Parquet struct needs a field)."""
    import pyarrow as pa

    try:
        type_ = pa.array([value]).type
    except (pa.ArrowException, OverflowError, ValueError, TypeError) as err:
        return f"{type(err).__name__}: {err}"
    return "it is or holds an empty object {}" if _has_empty_struct(type_) else None


def _has_empty_struct(type_) -> bool:
    """Whether an Arrow type is, or holds at any depth, a struct without fields."""
    import pyarrow as pa

    if pa.types.is_struct(type_) and type_.num_fields == 0:
        return True
    return any(_has_empty_struct(type_.field(index).type) for index in range(type_.num_fields))


RowKey = Tuple[str, int]  # a post's input file and row


@dataclass(frozen=True)
class InFlight:
    """What a run with one process is doing, by input file and row: the batch
    it is tagging, the one post of it tagged alone (if any), and the posts
    runs died on alone, whose error rows may not be in OUTPUT yet (Parquet
    keeps rows in memory for a while; `--retry-errors` drops them)."""

    batch: FrozenSet[RowKey] = frozenset()
    alone: Optional[RowKey] = None
    killed: FrozenSet[RowKey] = frozenset()

    def to_bytes(self) -> bytes:
        if not (self.batch or self.alone or self.killed):
            return b""
        return json.dumps({"batch": sorted(self.batch), "alone": self.alone,
                           "killed": sorted(self.killed)}).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> "InFlight":
        """What `to_bytes` wrote (its first line); nothing from anything else."""
        try:
            found = json.loads(data.split(b"\n", 1)[0])
            alone = None if found["alone"] is None else _row_key(found["alone"])
            return cls(frozenset(map(_row_key, found["batch"])), alone,
                       frozenset(map(_row_key, found["killed"])))
        except (ValueError, TypeError, KeyError, ArithmeticError, RecursionError):
            return cls()  # empty, torn by a kill, or not apply's


def _row_key(value: Any) -> RowKey:
    """An input file's name and a row number, from their JSON form; ValueError otherwise."""
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and type(value[1]) is int):
        return value[0], value[1]
    raise ValueError(f"not a file name and a row: {value!r}")


class OutputLock:
    """An exclusive lock on OUTPUT for one run, so that a second run on the
    same OUTPUT is refused at once instead of writing every post again: an
    flock on `.OUTPUT.lock` beside it (neither in OUTPUT nor in its parts
    folder), made by the run and removed when it ends, with the folders made
    for it if the run left them empty. One left by a killed run is taken
    over, as the kernel dropped its lock. (No lock where the platform has no
    flock.)

    The lock file also notes the posts in flight (`record`): a run that dies
    while tagging them (a crash in native code, out of memory) leaves the
    note, and the next run finds it in `crashed`."""

    def __init__(self, output: Path):
        self.output = output
        self.path = output.with_name(f".{output.name}.lock")
        self.descriptor: Optional[int] = None
        self.crashed = InFlight()
        self.made: List[Path] = []  # the folders made for the lock file, deepest first

    def record(self, in_flight: InFlight) -> None:
        """Note the posts tagged from now on, in one write: a kill leaves the
        last note, or a torn one that reads as none (a longer note's tail is
        read as nothing)."""
        if self.descriptor is not None:
            content = LOCK_TEXT + in_flight.to_bytes()
            os.pwrite(self.descriptor, content, 0)
            os.ftruncate(self.descriptor, len(content))

    def __enter__(self) -> "OutputLock":
        if fcntl is None:
            return self
        self.made = [folder for folder in (self.path.parent, *self.path.parent.parents)
                     if not folder.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.descriptor is None:
            descriptor = self._open()
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise ValueError(f"OUTPUT {self.output} is being written by another apply run "
                                 f"(it holds {self.path}): wait for that run to end, or choose "
                                 "another OUTPUT.") from None
            if _same_file(descriptor, self.path):
                self.descriptor = descriptor
            else:  # the run that held it removed it: lock the one there now
                os.close(descriptor)
        self._claim()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.descriptor is not None:
            self.path.unlink(missing_ok=True)  # while locked: no other run holds this file
            os.close(self.descriptor)
            self.descriptor = None
        for folder in self.made:  # a run that wrote nothing leaves no folders behind
            try:
                folder.rmdir()
            except OSError:  # not empty: OUTPUT is in it
                break

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise refusal(str(self.path), f"is where apply keeps the lock of OUTPUT, but it "
                          f"cannot be opened as a file ({err.strerror})") from None

    def _claim(self) -> None:
        """Mark the lock file as apply's, and read what a killed run left in
        it; refuse one that holds anything else."""
        content = os.pread(self.descriptor, MAX_LOCK_BYTES, 0)  # a longer note reads as none
        if content and not content.startswith(LOCK_TEXT):
            os.close(self.descriptor)
            self.descriptor = None
            raise refusal(str(self.path), "is where apply keeps the lock of OUTPUT, but it is "
                          "not apply's lock file")
        if not content:
            os.write(self.descriptor, LOCK_TEXT)
        self.crashed = InFlight.from_bytes(content[len(LOCK_TEXT):])


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether `path` still names the file open as `descriptor`."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(descriptor)
    return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)


def open_writer(path: Path, overwrite: bool = False, rows_per_part: int = 20_000):
    """The writer for OUTPUT's format (by suffix), after checking that what is
    there already is apply's own output; `overwrite` removes that, to start afresh."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"OUTPUT {path} must end in .jsonl or .parquet")
    if path.is_dir():
        raise refusal(f"OUTPUT {path}", "is a folder (apply writes one file)")
    writer = JsonlWriter(path) if suffix == ".jsonl" else ParquetWriter(path, rows_per_part)
    writer.check_own()
    if overwrite:
        writer.remove()
    return writer

