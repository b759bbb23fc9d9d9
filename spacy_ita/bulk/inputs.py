"""Posts for `apply`, streamed row by row from JSONL, CSV or Parquet files.

INPUT is one file, a folder (searched recursively) or a glob. Every row keeps
its place, (file relative to the input root, row index), so that a resumed run
can skip the rows already in the output. A row that cannot be used (bad JSON,
no text) still becomes a Post, with its error: it is written, never dropped.
"""
import csv
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlparse

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# The columns `apply` writes itself; input columns of these names are not carried.
RESULT_COLUMNS = ("input_file", "input_row", "entities", "visual_context", "view",
                  "image_error", "knowledge_error", "error", "retryable")
PARQUET_READ_ROWS = 1024


@dataclass
class Post:
    """One input row on its way through `apply`: what was read, then what the
    pipeline found (entities, context, view) or why it could not."""

    file: str
    row: int
    where: str
    text: Optional[str] = None
    image: Any = None
    carried: Dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    image_error: Optional[str] = None
    knowledge_error: Optional[str] = None
    retryable: bool = False  # failed for a reason that may pass: the next run redoes it
    visual_context: Optional[Dict[str, List[str]]] = None
    entities: List[Dict[str, Any]] = field(default_factory=list)
    view: Optional[str] = None

    def output_row(self) -> Dict[str, Any]:
        """The carried columns, then the results."""
        row = dict(self.carried)
        row.update(input_file=self.file, input_row=self.row, entities=self.entities,
                   visual_context=self.visual_context, view=self.view,
                   image_error=self.image_error, knowledge_error=self.knowledge_error,
                   error=self.error, retryable=self.retryable)
        return row


@dataclass
class Columns:
    """Which input columns hold the text and the image, and which are carried
    into the output (None: all but binary ones, such as embedded images, and
    those `apply` writes itself)."""

    text: str = "text"
    image: Optional[str] = "image"
    keep: Optional[Sequence[str]] = None

    def __post_init__(self) -> None:
        clashes = [name for name in self.keep or () if name in RESULT_COLUMNS]
        if clashes:
            raise ValueError(f"cannot keep column(s) {clashes}: apply writes columns of "
                             f"those names ({', '.join(RESULT_COLUMNS)})")


class DoneRows:
    """The (file, row) pairs already in the output: a bitmap per file, so
    ten million rows take about a megabyte."""

    def __init__(self) -> None:
        self.bitmaps: Dict[str, bytearray] = {}
        self.count = 0

    def add(self, file: str, row: int) -> bool:
        """Mark a row done; False when it already was."""
        bitmap = self.bitmaps.setdefault(file, bytearray())
        byte, bit = divmod(row, 8)
        if byte >= len(bitmap):
            bitmap.extend(bytes(byte + 1 - len(bitmap)))
        if bitmap[byte] >> bit & 1:
            return False
        bitmap[byte] |= 1 << bit
        self.count += 1
        return True

    def __contains__(self, key: Tuple[str, int]) -> bool:
        return has_row(self.bitmaps.get(key[0]), key[1])


def has_row(bitmap: Optional[bytearray], row: int) -> bool:
    """Whether a DoneRows bitmap of one file has `row`."""
    byte, bit = divmod(row, 8)
    return bitmap is not None and byte < len(bitmap) and bool(bitmap[byte] >> bit & 1)


@dataclass
class InputFile:
    path: Path
    name: str  # relative to the input root: the `input_file` of its rows
    format: str


def find_inputs(spec: str) -> List[InputFile]:
    """The input files of a file, a folder (recursively) or a glob, in a stable order."""
    path = Path(spec)
    if path.is_dir():
        root, paths = path, sorted(p for p in path.rglob("*") if p.is_file())
        paths = [p for p in paths if p.suffix.lower() in FORMATS]
    elif path.is_file():
        root, paths = path.parent, [path]
        if path.suffix.lower() not in FORMATS:
            raise ValueError(f"{spec}: expected a {', '.join(FORMATS)} file")
    elif glob.has_magic(spec):
        root = _glob_root(spec)
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True)
                       if os.path.isfile(p) and Path(p).suffix.lower() in FORMATS)
    else:
        raise FileNotFoundError(f"input {spec!r} does not exist")
    if not paths:
        raise ValueError(f"no {', '.join(FORMATS)} files in {spec!r}")
    return [InputFile(p, p.relative_to(root).as_posix(), FORMATS[p.suffix.lower()])
            for p in paths]


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    plain = []
    for part in parts:
        if glob.has_magic(part):
            break
        plain.append(part)
    return Path(*plain) if plain else Path(".")


def count_rows(item: InputFile) -> int:
    """Rows of a file, for the progress bar: exact for Parquet and JSONL, the
    number of lines after the header for CSV."""
    if item.format == "parquet":
        return _parquet(item.path).metadata.num_rows
    count = 0
    with open(item.path, "rb") as file:
        for line in file:
            count += bool(line.strip())
    return count - 1 if item.format == "csv" and count else count


def read_posts(inputs: Sequence[InputFile], columns: Columns,
               done: Optional[DoneRows] = None) -> Iterator[Post]:
    """The posts of all input files, in order, without those already done."""
    for item in inputs:
        bitmap = done.bitmaps.get(item.name) if done is not None else None
        yield from read_file_posts(item, columns, bitmap)


def read_file_posts(item: InputFile, columns: Columns,
                    bitmap: Optional[bytearray] = None) -> Iterator[Post]:
    """The posts of one file, skipping the rows whose bit is set in `bitmap`."""
    reader = {"jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records}
    keep = columns.keep
    if keep is None and item.format == "parquet":
        schema = _parquet(item.path).schema_arrow
        binary = require_pyarrow().types.is_binary, require_pyarrow().types.is_large_binary
        keep = [field.name for field in schema if field.name not in RESULT_COLUMNS
                and not any(is_binary(field.type) for is_binary in binary)]
    for row, where, record, error in reader[item.format](item.path):
        if has_row(bitmap, row):
            continue
        yield make_post(item, row, where, record, error, columns, keep)


def make_post(item: InputFile, row: int, where: str, record: Dict[str, Any],
              error: Optional[str], columns: Columns, keep: Optional[Sequence[str]]) -> Post:
    """A Post from one record, or from the error that made the row unreadable;
    `keep` names the carried columns (None: all but those apply writes)."""
    post = Post(item.name, row, where)
    if error is not None:
        post.error = f"{where}: {error}"
        return post
    if keep is None:
        keep = [name for name in record if name not in RESULT_COLUMNS]
    post.carried = {name: record.get(name) for name in keep}
    text = record.get(columns.text)
    if not isinstance(text, str):
        found = ("is missing" if columns.text not in record else
                 "is empty (null)" if text is None else f"holds a {type(text).__name__}")
        post.error = f"{where}: no text: column {columns.text!r} {found}"
        return post
    post.text = text
    if columns.image is not None:
        try:
            post.image = image_location(record.get(columns.image), item.path.parent)
        except ValueError as err:
            post.image_error = f"{where}: {err}"
    return post


def image_location(value: Any, base: Path) -> Any:
    """What an image cell points to: None, raw bytes, an http(s) URL, or a
    local path (relative paths and file:// URLs resolved against `base`)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise ValueError(f"image value must be a path, a URL or bytes, "
                         f"got a {type(value).__name__}")
    value = value.strip()
    scheme = urlparse(value).scheme.lower()
    if scheme in ("http", "https"):
        return value
    if scheme == "file":
        parsed = urlparse(value)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URL {value!r} names another host ({parsed.netloc})")
        return unquote(parsed.path)
    if len(scheme) > 1:  # not a Windows drive letter
        raise ValueError(f"image URL {value!r}: unsupported scheme {scheme!r} "
                         "(http, https and file are supported)")
    return value if os.path.isabs(value) else str(base / value)


# Readers yield (row index, where, record, error): the record is a dict, or
# empty with the reason in `error`.
Records = Iterator[Tuple[int, str, Dict[str, Any], Optional[str]]]


def _jsonl_records(path: Path) -> Records:
    row = 0
    with open(path, encoding="utf8", errors="replace") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where, error = f"{path}, line {number}", None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                record, error = {}, f"invalid JSON: {err}"
            if not isinstance(record, dict):
                record, error = {}, f"expected a JSON object, got {type(record).__name__}"
            yield row, where, record, error
            row += 1


def _csv_records(path: Path) -> Records:
    with open(path, encoding="utf8", errors="replace", newline="") as file:
        reader = csv.DictReader(file)
        for row, record in enumerate(reader):
            where = f"{path}, row {row + 1} (line {reader.line_num})"
            error = None
            if None in record:
                error = f"{len(record[None])} more field(s) than the header has"
            yield row, where, record, error


def require_pyarrow():
    """pyarrow, or an error that says how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError("Parquet input and output need pyarrow: pip install pyarrow "
                           "(or spacy-ita[parquet])") from None
    return pyarrow


def _parquet(path: Path):
    return require_pyarrow().parquet.ParquetFile(path)


def _parquet_records(path: Path) -> Records:
    row = 0
    for batch in _parquet(path).iter_batches(batch_size=PARQUET_READ_ROWS):
        for record in batch.to_pylist():
            yield row, f"{path}, row {row + 1}", record, None
            row += 1
