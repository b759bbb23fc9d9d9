"""Posts for `apply`, streamed row by row from JSONL, CSV or Parquet files.

INPUT is one file, a folder (searched recursively) or a glob. Every row keeps
its place, (file relative to the input root, row index), so that a resumed run
can skip the rows already in the output. A row that cannot be used (bad JSON,
no text) still becomes a Post, with its error: it is written, never dropped.
Text that is not valid Unicode (bytes that are not UTF-8, half of a surrogate
pair) is repaired to U+FFFD, with a warning in the row that says where. OUTPUT
and its parts are never read as input, and a text column that no input file
has is refused before the run.
"""
import codecs
import csv
import glob
import io
import itertools
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlparse

from ..visual_context import SURROGATE

logger = logging.getLogger(__name__)
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# The columns `apply` writes itself; input columns of these names are not carried.
RESULT_COLUMNS = ("input_file", "input_row", "entities", "visual_context", "view",
                  "image_error", "warning", "knowledge_error", "error", "retryable")
PARQUET_READ_ROWS = 1024
# The longest CSV field read, in characters (the csv module's default is 131,072):
# a quote left open does not read the rest of the file into one field.
CSV_FIELD_LIMIT = 1 << 24
# A JSON row whose lists and objects nest deeper is an error row: Ray cannot
# pickle one much deeper (about 500 levels) and would stop the whole run.
MAX_JSON_DEPTH = 100
# The rows of each input file `check_text_column` looks at.
CHECKED_ROWS = 100


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
    warning: Optional[str] = None
    knowledge_error: Optional[str] = None
    retryable: bool = False  # failed for a reason that may pass: the next run redoes it
    visual_context: Optional[Dict[str, List[str]]] = None
    entities: List[Dict[str, Any]] = field(default_factory=list)
    view: Optional[str] = None

    def output_row(self) -> Dict[str, Any]:
        """Where the post came from, the carried columns, then the results. A
        JSONL row starts with `{"input_file": `, which tells a line cut short
        by a kill from the start of a foreign file (outputs.JsonlWriter)."""
        row = {"input_file": self.file, "input_row": self.row}
        row.update(self.carried)
        row.update(entities=self.entities, visual_context=self.visual_context, view=self.view,
                   image_error=self.image_error, warning=self.warning,
                   knowledge_error=self.knowledge_error, error=self.error,
                   retryable=self.retryable)
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
    path, root = Path(spec), input_root(spec)
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file())
        paths = [p for p in paths if p.suffix.lower() in FORMATS]
    elif path.is_file():
        paths = [path]
        if path.suffix.lower() not in FORMATS:
            raise ValueError(f"{spec}: expected a {', '.join(FORMATS)} file")
    elif glob.has_magic(spec):
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True)
                       if os.path.isfile(p) and Path(p).suffix.lower() in FORMATS)
    else:
        raise FileNotFoundError(f"input {spec!r} does not exist")
    if not paths:
        raise ValueError(f"no {', '.join(FORMATS)} files in {spec!r}")
    return [InputFile(p, shown_path(p.relative_to(root).as_posix()), FORMATS[p.suffix.lower()])
            for p in paths]


def without_output(inputs: Sequence[InputFile], output: Path) -> List[InputFile]:
    """`inputs` without OUTPUT and the files in its parts folder, OUTPUT.parts/
    (by real path: a link to OUTPUT is OUTPUT), which INPUT's folder or glob
    may hold; a warning says so. Read as input, a rerun would read back the
    rows it writes (a JSONL OUTPUT, appended to while it is read, for ever),
    so INPUT with nothing else is refused. The other files apply writes
    beside OUTPUT, the lock `.OUTPUT.lock` and temporaries `.NAME.tmp-*`, end
    in no input suffix: find_inputs never lists them."""
    target = os.path.realpath(output)
    parts = Path(os.path.realpath(output.with_name(output.name + ".parts")))
    own, others = [], []
    for item in inputs:
        real = os.path.realpath(item.path)
        (own if real == target or parts in Path(real).parents else others).append(item)
    if not others:
        raise ValueError(f"INPUT holds nothing but OUTPUT {output} and its parts, which apply "
                         "writes: it would read back its own rows. Choose another OUTPUT.")
    if own:
        logger.warning("%d input file(s) are OUTPUT %s or its parts, which apply writes: not "
                       "read as input (the first: %s)", len(own), output, own[0].path)
    return others


def input_root(spec: str) -> Path:
    """The folder INPUT names: itself, a file's folder, or a glob's folder before
    its first wildcard. `input_file` names are relative to it, and it is the
    default image root."""
    path = Path(spec)
    if path.is_dir():
        return path
    return _glob_root(spec) if not path.is_file() and glob.has_magic(spec) else path.parent


def shown_path(path: Any) -> str:
    """A path as text that every writer takes: the bytes of a file name that
    are not UTF-8 as \\xNN, so that `input_file` is written as read and a
    resumed run finds its rows."""
    return os.fsencode(path).decode("utf8", errors="backslashreplace")


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
    """Rows of a file, as its reader reads them (a CSV file is parsed: a field
    may hold line breaks; CSV and JSONL lines may end in a lone CR; a Parquet
    file whose footer cannot be read is its one error row)."""
    if item.format == "parquet":
        with _parquet(item.path) as (parquet, _):
            return 1 if parquet is None else parquet.metadata.num_rows  # 1: its error row
    if item.format == "csv":
        return sum(1 for _ in _csv_rows(item.path))
    with open(item.path, "rb") as file:
        return sum(1 for _ in _json_lines(file))


_DIED_ALONE = "died while tagging this post alone (a crash in native code, or out of memory?)"


def worker_died(post: Post) -> str:
    """The error of a post whose worker process died while tagging it alone."""
    return f"{post.where}: not tagged: the worker process {_DIED_ALONE}"


def process_died(post: Post) -> str:
    """The error of a post an earlier one-process run of apply died on, tagging it alone."""
    return (f"{post.where}: not tagged: an earlier run of apply {_DIED_ALONE}; "
            "--retry-errors tries it again")


def unfinished_files(inputs: Sequence[InputFile], done: DoneRows) -> List[InputFile]:
    """The input files with rows that are not done."""
    return [item for item in inputs
            if int.from_bytes(done.bitmaps.get(item.name, b""), "little").bit_count() <
            count_rows(item)]


def check_text_column(inputs: Sequence[InputFile], columns: Columns) -> None:
    """Refuse a text column that no input file has (in a Parquet file's
    schema, or in a row among the first CHECKED_ROWS of the others, a CSV
    row with too many fields included): a mistake in the setup (the text is
    in `body`), not in the posts, which would write every post as a final
    error row that the corrected rerun skips as done. Rows without it in
    files that have it stay error rows; no readable row: no refusal."""
    first = None  # the first file with a readable row, and that row's columns
    for item in inputs:
        if item.format == "parquet":
            with _parquet(item.path) as (parquet, _):
                if parquet is not None and columns.text in parquet.schema_arrow.names:
                    return
        for _, _, record, error, _ in itertools.islice(READERS[item.format](item.path),
                                                       CHECKED_ROWS):
            if columns.text in record:
                return
            if error is None and first is None:
                first = item, ", ".join(map(repr, record)) or "no columns"
    if first is not None:
        raise ValueError(f"no input file has the text column {columns.text!r} in its first "
                         f"rows: {shown_path(first[0].path)} has {first[1]}. Name the column "
                         "that holds the text (--text-column, or Columns(text=...)).")


def read_posts(inputs: Sequence[InputFile], columns: Columns,
               done: Optional[DoneRows] = None) -> Iterator[Post]:
    """The posts of all input files, in order, without those already done."""
    for item in inputs:
        bitmap = done.bitmaps.get(item.name) if done is not None else None
        yield from read_file_posts(item, columns, bitmap)


def read_file_posts(item: InputFile, columns: Columns,
                    bitmap: Optional[bytearray] = None) -> Iterator[Post]:
    """The posts of one file, skipping the rows whose bit is set in `bitmap`."""
    keep = columns.keep
    if keep is None and item.format == "parquet":
        keep = _parquet_carried(item.path)
    for row, where, record, error, warning in READERS[item.format](item.path):
        if has_row(bitmap, row):
            continue
        yield make_post(item, row, where, record, error, columns, keep, warning)


def make_post(item: InputFile, row: int, where: str, record: Dict[str, Any],
              error: Optional[str], columns: Columns, keep: Optional[Sequence[str]],
              warning: Optional[str] = None) -> Post:
    """A Post from one record, or from the error that made the row unreadable;
    `keep` names the carried columns (None: all but those apply writes);
    `warning` says what the reader repaired."""
    post = Post(item.name, row, where)
    if warning is not None:
        post.warning = f"{where}: {warning}"
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
    """What an image cell points to: None, raw bytes, an http(s) URL, or an
    absolute local path (relative paths resolved against `base`; a file://
    URL's path). Whether it may be read is the worker's check (`fetch`)."""
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
    # Absolute, so that a worker in another folder or on another node reads the same file.
    return value if os.path.isabs(value) else str(base.absolute() / value)


# Readers yield (row index, where, record, error, warning): the record is a
# dict, or empty with the reason in `error`; `warning` says what was repaired.
Records = Iterator[Tuple[int, str, Dict[str, Any], Optional[str], Optional[str]]]

# How JSON escapes a lone surrogate (`SURROGATE`, a tweet cut in an emoji): `\ud83d`.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
REPLACEMENT = "\ufffd"


def without_surrogates(value: Any) -> Tuple[Any, bool]:
    """`value` with every lone surrogate in its strings (dict keys and nested
    values too) replaced by U+FFFD, and whether there was any."""
    if isinstance(value, str):
        fixed, count = SURROGATE.subn(REPLACEMENT, value)
        return fixed, count > 0
    if isinstance(value, dict):
        items = [(without_surrogates(key), without_surrogates(item))
                 for key, item in value.items()]
        return ({key: item for (key, _), (item, _) in items},
                any(key_fixed or item_fixed for (_, key_fixed), (_, item_fixed) in items))
    if isinstance(value, (list, tuple)):
        items = [without_surrogates(item) for item in value]
        return [item for item, _ in items], any(fixed for _, fixed in items)
    return value, False


def repair_columns(record: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """`record` without lone surrogates, and the names of the columns that had some."""
    repaired, names = {}, []
    for name, value in record.items():
        fixed_name, name_fixed = without_surrogates(name)
        repaired[fixed_name], value_fixed = without_surrogates(value)
        if name_fixed or value_fixed:
            names.append(repr(fixed_name))
    return repaired, names


def decode_utf8(data: bytes) -> Tuple[str, Optional[str]]:
    """The text of UTF-8 `data`; bytes that are not UTF-8 become U+FFFD, and
    the warning says where the first one was."""
    try:
        return data.decode("utf8"), None
    except UnicodeDecodeError as err:
        return (data.decode("utf8", errors="replace"),
                f"bytes that are not UTF-8 (the first at byte {err.start}: "
                f"{data[err.start:err.end]!r}) replaced by U+FFFD")


def surrogates_warning(names: List[str]) -> str:
    """The warning of a row whose columns `names` had lone surrogates replaced."""
    return (f"half of a surrogate pair (a cut emoji?) replaced by U+FFFD in column(s) "
            f"{', '.join(names)}")


def join_warnings(*warnings: Optional[str]) -> Optional[str]:
    """The warnings that are there, in one string; None when none is."""
    return "; ".join(warning for warning in warnings if warning) or None


def jsonl_records(path: Path) -> Records:
    """(row, where, record, error, warning) per JSON line: a BOM, bytes that are not
    UTF-8 and lone surrogates are mended with a warning, a bad line is an error."""
    row, shown = 0, shown_path(path)
    with open(path, "rb") as file:
        for number, data in _json_lines(file):
            line, warning = decode_utf8(data)
            where, error = f"{shown}, line {number}", None
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as err:
                record, error = {}, f"invalid JSON: {err}"
            if not isinstance(record, dict):
                record, error = {}, f"expected a JSON object, got {type(record).__name__}"
            elif line.count("[") + line.count("{") > MAX_JSON_DEPTH and \
                    nesting_depth(record) > MAX_JSON_DEPTH:
                record, error = {}, f"lists and objects nested deeper than {MAX_JSON_DEPTH} levels"
            elif SURROGATE_ESCAPE.search(line):  # the only way to a surrogate in JSON
                record, names = repair_columns(record)
                warning = join_warnings(warning, names and surrogates_warning(names))
            yield row, where, record, error, warning
            row += 1


def _json_lines(file: IO[bytes]) -> Iterator[Tuple[int, bytes]]:
    """(line number, bytes) of the lines of a JSONL file that hold something,
    a BOM before the first taken off. A line ends in LF, CRLF or a lone CR
    (valid JSON escapes a CR in a string, so a raw one ends the line), each
    one line end for the line numbers."""
    # Latin-1 maps each byte to a character and back: the text layer only
    # finds the line ends, reading in chunks however long a line is.
    lines = io.TextIOWrapper(file, "latin-1", newline="")
    try:
        for number, line in enumerate(lines, start=1):
            data = line.encode("latin-1")
            if number == 1 and data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8):]
            if data.strip():
                yield number, data
    finally:
        lines.detach()  # `file` is the caller's to close


def nesting_depth(value: Any) -> int:
    """How deep lists and dicts nest in `value` (0 for a scalar), level by
    level rather than by recursion."""
    depth, level = 0, [value]
    while True:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            return depth
        depth += 1
        level = [item for container in containers
                 for item in (container.values() if isinstance(container, dict) else container)]


def _csv_records(path: Path) -> Records:
    """The rows of a CSV file with a header (see _csv_rows), bytes that are
    not UTF-8 mended with a warning, and a warning in each row when the
    header repeats a column name; a header it cannot read is one error row
    for the file."""
    shown = shown_path(path)
    for row, (line, record, error, note) in enumerate(_csv_rows(path)):
        if record is None:
            yield 0, f"{shown}, line {line} (the header)", {}, error, None
            return
        where = f"{shown}, row {row + 1} (line {line})"
        record, names = repair_columns(record)
        warning = names and (f"bytes that are not UTF-8 replaced by U+FFFD in column(s) "
                             f"{', '.join(names)}")
        if None in record:
            error = f"{len(record[None])} more field(s) than the header has"
        yield row, where, record, error, join_warnings(note, warning)


def _csv_rows(path: Path) -> Iterator[Tuple[int, Optional[Dict[str, Any]], Optional[str],
                                            Optional[str]]]:
    """(line number, record, error, note) per row, as the csv module reads
    the file: a row it cannot read (a field over CSV_FIELD_LIMIT) is an error
    with an empty record, and the next row starts on the line after it; a
    header it cannot read is the one row, its record None. A column name the
    header repeats is renamed as pandas renames it (`id`, `text`, `id` are
    read as `id`, `text`, `id.1`), rather than the last one's value kept
    alone; `note` says so (None when no name is repeated)."""
    # surrogateescape keeps each byte that is not UTF-8 as a lone surrogate,
    # so that the row that has one can say so.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        reader = csv.DictReader(file)
        try:
            header = _read_csv(lambda: reader.fieldnames) or []  # []: an empty file
        except csv.Error as err:
            yield reader.reader.line_num, None, f"cannot be read as CSV: {err}", None
            return
        reader.fieldnames = unique_names(header)
        renamed = [f"column {number} {old!r} is read as {new!r}" for number, (old, new)
                   in enumerate(zip(header, reader.fieldnames), start=1) if old != new]
        note = f"the header repeats a column name: {', '.join(renamed)}" if renamed else None
        while True:
            try:
                record, error = _read_csv(lambda: next(reader)), None
            except StopIteration:
                return
            except csv.Error as err:
                record, error = {}, f"cannot be read as CSV: {err}"
            yield reader.reader.line_num, record, error, note


def unique_names(names: Sequence[str]) -> List[str]:
    """`names` with each repeat renamed as pandas.read_csv renames it: the
    name, a dot and the first number that gives a name not yet taken nor in
    `names` (`id`, `id`, `id.1`, `id` become `id`, `id.2`, `id.1`, `id.3`).
    Linear in the header's length: each name's search goes on from its last
    number (a hostile header of 2,000 `a` took 16 s, 20,000 about four hours)."""
    given, taken, last = set(names), set(), {}
    unique: List[str] = []
    for name in names:
        new = name
        if new in taken:
            number = last.get(name, 0)
            while new in taken or new in given:
                number += 1
                new = f"{name}.{number}"
            last[name] = number
        taken.add(new)
        unique.append(new)
    return unique


def _read_csv(read: Callable[[], Any]) -> Any:
    """`read()` of a csv reader with CSV_FIELD_LIMIT (the csv module's limit
    is the whole process's, so it is put back)."""
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        return read()
    finally:
        csv.field_size_limit(previous)


def require_pyarrow():
    """pyarrow, or an error that says how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError("Parquet input and output need pyarrow: pip install pyarrow "
                           "(or spacy-ita[parquet])") from None
    return pyarrow


@contextmanager
def _parquet(path: Path) -> Iterator[Tuple[Any, Optional[str]]]:
    """A Parquet file open for reading, or None and why its footer cannot be
    read (0 bytes, as a crashed writer leaves; cut short; not Parquet). A file
    that cannot be opened at all (gone, no permission) raises, as a JSONL or
    CSV one does."""
    pa = require_pyarrow()
    with open(path, "rb") as file:
        try:
            parquet, error = pa.parquet.ParquetFile(file), None
        except (pa.ArrowException, OSError) as err:
            parquet, error = None, f"cannot be read as Parquet ({type(err).__name__}: {err})"
        yield parquet, error


def _parquet_carried(path: Path) -> Optional[List[str]]:
    """The columns of a Parquet file carried by default: all but binary ones
    (embedded images) and those apply writes; None for a file that cannot be
    read (its error row carries nothing)."""
    binary = require_pyarrow().types.is_binary, require_pyarrow().types.is_large_binary
    with _parquet(path) as (parquet, _):
        if parquet is None:
            return None
        return [field.name for field in parquet.schema_arrow if field.name not in RESULT_COLUMNS
                and not any(is_binary(field.type) for is_binary in binary)]


def _parquet_records(path: Path) -> Records:
    """(row, where, record, error, warning) per row of a Parquet file, as many
    as count_rows counts, so that what cannot be read still has its rows and a
    run goes on with the other files. A file whose footer cannot be read is
    one error row (`--retry-errors` reads it again once it is whole). A
    damaged page in a row group makes the rows of that group from the batch
    that holds it on error rows (the rows read before it are kept), and the
    next row group is read."""
    pa = require_pyarrow()
    shown = shown_path(path)
    with _parquet(path) as (parquet, error):
        if parquet is None:
            yield 0, shown, {}, (f"{error}; none of its rows was read (--retry-errors "
                                 "reads it again once it is whole)"), None
            return
        row = 0
        for group in range(parquet.num_row_groups):
            end = row + parquet.metadata.row_group(group).num_rows
            try:
                for record, warning in _row_group_records(parquet, group):
                    yield row, f"{shown}, row {row + 1}", record, None, warning
                    row += 1
            except (pa.ArrowException, OSError) as err:
                damage = (f"cannot be read: the file is damaged in row group {group}, rows "
                          f"{row + 1} to {end} ({type(err).__name__}: {err})")
                for lost in range(row, end):
                    yield lost, f"{shown}, row {lost + 1}", {}, damage, None
            row = end


def _row_group_records(parquet, group: int) -> Iterator[Tuple[Dict[str, Any], Optional[str]]]:
    """(record, warning) per row of one row group of a Parquet file."""
    for batch in parquet.iter_batches(batch_size=PARQUET_READ_ROWS, row_groups=[group]):
        try:
            records, warnings = batch.to_pylist(), [None] * batch.num_rows
        except _cell_errors():  # a writer that did not check its strings or its dates
            records, warnings = _records_repaired(batch)
        yield from zip(records, warnings)


def _cell_errors() -> Tuple[type, ...]:
    """What turning a Parquet cell into a Python value may raise: text that is
    not UTF-8 (a ValueError), a date past the year 9999, a type Arrow cannot convert."""
    return ValueError, OverflowError, require_pyarrow().ArrowException


def _records_repaired(batch) -> Tuple[List[Dict[str, Any]], List[Optional[str]]]:
    """The rows of a Parquet batch with cells Python cannot hold as they are:
    bad bytes in a string column become U+FFFD, any other such cell (nested
    text that is not UTF-8, a date in the year 11476) is left out; per row, a
    warning that says which column."""
    pa = require_pyarrow()
    columns, warnings = {}, [None] * batch.num_rows
    for name, column in zip(batch.schema.names, batch.columns):
        try:
            columns[name] = column.to_pylist()
            continue
        except _cell_errors():
            pass
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            values, problems = zip(*(decode_utf8(data) if data is not None else (None, None)
                                     for data in column.cast(pa.large_binary()).to_pylist()))
        else:
            values, problems = zip(*(_nested_cell(column, index)
                                     for index in range(len(column))))
        columns[name] = values
        warnings = [join_warnings(warning, problem and f"column {name!r}: {problem}")
                    for warning, problem in zip(warnings, problems)]
    records = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return records, warnings


def _nested_cell(column, index: int) -> Tuple[Any, Optional[str]]:
    try:
        return column[index].as_py(), None
    except UnicodeDecodeError:
        return None, "holds text that is not UTF-8; left out (null)"
    except _cell_errors() as err:
        return None, f"cannot be read ({type(err).__name__}: {err}); left out (null)"


# The reader of each input format (see Records).
READERS: Dict[str, Callable[[Path], Records]] = {
    "jsonl": jsonl_records, "csv": _csv_records, "parquet": _parquet_records}
