"""Output of `apply`: JSONL or Parquet, written so that a killed run resumes.

Each row carries its `input_file` and `input_row`. On start a writer reads the
rows already in the output (`done_rows`) and the run skips them, so every post
is written exactly once however often the run is killed and restarted.

- JSONL is appended to in place, one flush per batch. A kill can leave a
  half-written last line; the next run cuts it off (that row is redone).
- A row written with `retryable` true (a failure that may pass: the LM
  down, a timeout, the cache) is taken out of the output when the next run
  starts (`drop_redone`, which rewrites the files that hold one), so that run
  does it again and each post is still in the output once; `retry_errors`
  takes out every row with an error.
- Parquet cannot be appended to, so the rows go into part files in
  `OUTPUT.parts/` (each written to a temporary name, then renamed), at most
  `rows_per_part` rows or `part_seconds` of work each; at the end the parts
  are merged into OUTPUT, one part in memory at a time.
"""
import base64
import datetime
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from .inputs import DoneRows, require_pyarrow


class JsonlWriter:
    def __init__(self, path: Path):
        self.path = path
        self.file = None

    def done_rows(self) -> DoneRows:
        """The rows in the file; a partial last line (a kill mid-write) is cut off."""
        done = DoneRows()
        if not self.path.exists():
            return done
        complete = 0
        with open(self.path, "rb") as file:
            for number, line in enumerate(file, start=1):
                if not line.endswith(b"\n"):
                    break
                complete += len(line)
                if line.strip():
                    file_name, row = _row_key(line, self.path, number)
                    done.add(file_name, row)
        if complete < self.path.stat().st_size:
            os.truncate(self.path, complete)
        return done

    def write(self, rows: List[Dict[str, Any]]) -> None:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "ab")
        data = b"".join(json.dumps(row, ensure_ascii=False, default=_json_value).encode("utf8")
                        + b"\n" for row in rows)
        self.file.write(data)
        self.file.flush()

    def finish(self) -> None:
        if self.file is not None:
            os.fsync(self.file.fileno())
            self.file.close()
            self.file = None

    stop = finish  # every written row is already in the file

    def drop_redone(self, retry_errors: bool = False) -> int:
        """Take the rows to be redone (see `is_redone`) out of the file; their
        number. The file is rewritten (to a temporary file, then renamed) only
        when a line may hold one."""
        markers = REDONE_MARKERS[retry_errors]
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as file:
            if not any(marker in line for line in file for marker in markers):
                return 0
        dropped = 0
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(self.path, "rb") as source, open(tmp, "wb") as kept:
            for line in source:
                if line.endswith(b"\n") and any(marker in line for marker in markers) \
                        and is_redone(_json_or_none(line), retry_errors):
                    dropped += 1
                    continue
                kept.write(line)
            kept.flush()
            os.fsync(kept.fileno())
        if dropped:
            os.replace(tmp, self.path)
        else:  # the marks were in carried columns
            tmp.unlink()
        return dropped


def _row_key(line: bytes, path: Path, number: int):
    try:
        row = json.loads(line)
        return row["input_file"], int(row["input_row"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}, line {number}: not a row written by `apply` (no "
                         "input_file and input_row); choose another OUTPUT or --overwrite "
                         "it") from None


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
        self.buffer: List[Dict[str, Any]] = []
        self.buffer_since = time.monotonic()

    def done_rows(self) -> DoneRows:
        """The rows in OUTPUT and its parts. A finished OUTPUT becomes the first
        part, so that new input rows can be added to it."""
        import pyarrow.parquet as pq

        if self.path.exists():
            if self.parts.exists():  # killed after the merge: the parts hold every row
                self.path.unlink()
            else:
                self.parts.mkdir(parents=True)
                os.replace(self.path, self.parts / _part_name(0))
        done = DoneRows()
        for part in self._part_files():
            table = pq.read_table(part, columns=["input_file", "input_row"])
            for file_name, row in zip(table["input_file"].to_pylist(),
                                      table["input_row"].to_pylist()):
                done.add(file_name, row)
        return done

    def _part_files(self) -> List[Path]:
        if not self.parts.exists():
            return []
        for stale in self.parts.glob(".*.tmp"):
            stale.unlink()
        return sorted(self.parts.glob("part-*.parquet"))

    def write(self, rows: List[Dict[str, Any]]) -> None:
        self.buffer.extend(rows)
        if (len(self.buffer) >= self.rows_per_part
                or time.monotonic() - self.buffer_since >= self.part_seconds):
            self.flush()

    def flush(self) -> None:
        import pyarrow.parquet as pq

        if self.buffer:
            self.parts.mkdir(parents=True, exist_ok=True)
            existing = self._part_files()
            number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
            tmp = self.parts / f".{_part_name(number)}.tmp"
            pq.write_table(rows_to_table(self.buffer), tmp)
            os.replace(tmp, self.parts / _part_name(number))
            self.buffer = []
        self.buffer_since = time.monotonic()

    def stop(self) -> None:
        """Keep what is buffered, as a part, for the next run."""
        self.flush()

    def finish(self) -> None:
        """Write what is buffered, then merge the parts into OUTPUT."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush()
        parts = self._part_files()
        if not parts:
            return
        schemas = [pq.read_schema(part) for part in parts]
        try:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"the parts in {self.parts} disagree on a column's type: {err}. "
                             "Keep such columns out (--keep) or write JSONL.") from None
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                table = pq.read_table(part)
                for name in schema.names:
                    if name not in table.column_names:
                        table = table.append_column(name, pa.nulls(len(table),
                                                                   schema.field(name).type))
                writer.write_table(table.select(schema.names).cast(schema))
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts)

    def drop_redone(self, retry_errors: bool = False) -> int:
        """Take the rows to be redone (see `is_redone`) out of OUTPUT and its
        parts; their number. Each file that holds one is rewritten batch by
        batch to a temporary file, then renamed."""
        files = ([self.path] if self.path.exists() else []) + self._part_files()
        return sum(_drop_parquet_rows(path, retry_errors) for path in files)


def _drop_parquet_rows(path: Path, retry_errors: bool) -> int:
    """Rewrite one Parquet file without its rows to be redone; their number."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    flags = [name for name in ("input_row", "retryable", *ERROR_COLUMNS)
             if name in source.schema_arrow.names]
    rows = source.read(columns=flags).to_pylist()
    keep = [not is_redone(row, retry_errors) for row in rows]
    if all(keep):
        return 0
    tmp = path.with_name(f".{path.name}.tmp")
    start = 0
    with pq.ParquetWriter(tmp, source.schema_arrow) as writer:
        for batch in source.iter_batches():
            writer.write_batch(batch.filter(pa.array(keep[start:start + len(batch)])))
            start += len(batch)
    os.replace(tmp, path)
    return keep.count(False)


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
            "knowledge_error": pa.string(), "error": pa.string(), "retryable": pa.bool_()}


def rows_to_table(rows: List[Dict[str, Any]]):
    """An Arrow table of output rows: result columns with fixed types, carried
    columns with the types their values have."""
    import pyarrow as pa

    fixed = result_schema()
    names: Dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    arrays = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays[name] = pa.array(values, type=fixed.get(name))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ValueError(f"column {name!r} cannot be written to Parquet: its values "
                             f"have different types ({err}). Keep it out (--keep) or "
                             "write JSONL.") from None
    return pa.table(arrays)


def open_writer(path: Path, overwrite: bool = False, rows_per_part: int = 20_000):
    """The writer for OUTPUT's format (by suffix); `overwrite` starts afresh."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"OUTPUT {path} must end in .jsonl or .parquet")
    writer = JsonlWriter(path) if suffix == ".jsonl" else ParquetWriter(path, rows_per_part)
    if overwrite:
        if path.exists():
            path.unlink()
        if suffix == ".parquet" and writer.parts.exists():
            shutil.rmtree(writer.parts)
    return writer

