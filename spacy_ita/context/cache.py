"""A persistent cache of extracted contexts in an SQLite file.

Rows are keyed by the image content hash and the extractor's cache key (its
name and output-changing settings), so re-running a corpus never recomputes a
context and changing one extractor's settings only recomputes that extractor.
WAL journaling lets several processes read and write at once; every write is
one atomic statement, so a writer killed at any moment leaves the file valid.
A file that cannot be opened, read or written raises CacheError, which names it;
a row that is not a context (another tool's, a hand edit) is a miss, and is
overwritten when the context is computed again.
"""
import json
import os
import sqlite3
from contextlib import contextmanager
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from ..visual_context import VisualContext

Context = Dict[str, List[str]]  # field name -> texts, as extractors return them

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contexts (
    image_hash TEXT NOT NULL,
    extractor TEXT NOT NULL,
    context TEXT NOT NULL,
    PRIMARY KEY (image_hash, extractor)
) WITHOUT ROWID
"""


def _context(text: Any) -> Optional[Context]:
    """A stored row as a context, or None (a miss) when it is not one: JSON
    mapping known fields to lists of texts, as `put` writes (a lone surrogate,
    `"\\ud83d"`, is half an emoji, not text)."""
    try:
        context = json.loads(text)
        VisualContext(**context)  # TypeError unless a mapping of fields to lists of strings
    except (ValueError, TypeError, RecursionError):
        return None
    return context


class CacheError(RuntimeError):
    """The cache file cannot be used: corrupt, unwritable, locked or on a full disk."""


class ContextCache:
    """Partial contexts by (image hash, extractor cache key), stored in SQLite.

    The connection is opened lazily in each process (and reopened after a
    fork), so the object can be pickled into `nlp.pipe(n_process=...)` workers.
    """

    def __init__(self, path: str, timeout: float = 60.0):
        self.path = os.fspath(path)
        self.timeout = timeout
        self._connection: Optional[sqlite3.Connection] = None
        self._pid: Optional[int] = None

    def __getstate__(self) -> Dict[str, object]:
        return {"path": self.path, "timeout": self.timeout}

    def __setstate__(self, state: Dict[str, object]) -> None:
        self.__init__(**state)

    @contextmanager
    def _failing_as(self, doing: str) -> Iterator[None]:
        """Turn SQLite's and the file system's errors into a CacheError naming the file."""
        try:
            yield
        except (sqlite3.Error, OSError) as err:
            raise CacheError(f"the context cache {self.path} cannot be {doing}: "
                             f"{type(err).__name__}: {err}. It only saves work: delete it, "
                             "or choose another cache file") from None

    def connection(self) -> sqlite3.Connection:
        if self._connection is None or self._pid != os.getpid():
            with self._failing_as("opened"):
                directory = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(directory, exist_ok=True)
                connection = sqlite3.connect(self.path, timeout=self.timeout,
                                             isolation_level=None, check_same_thread=False)
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute(_SCHEMA)
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def check(self) -> None:
        """Open the file and make a write that is rolled back: a corrupt or
        unwritable cache fails here, once, rather than on every post."""
        connection = self.connection()
        with self._failing_as("written to"):
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("INSERT OR REPLACE INTO contexts (image_hash, extractor, "
                                   "context) VALUES ('', '', '{}')")
            finally:
                connection.execute("ROLLBACK")

    def get(self, image_hash: str, extractor: str) -> Optional[Context]:
        with self._failing_as("read"):
            row = self.connection().execute(
                "SELECT context FROM contexts WHERE image_hash = ? AND extractor = ?",
                (image_hash, extractor),
            ).fetchone()
        return None if row is None else _context(row[0])

    def put(self, image_hash: str, extractor: str, context: Context) -> None:
        self.put_many([(image_hash, extractor, context)])

    def put_many(self, rows: Iterable[Tuple[str, str, Context]]) -> None:
        """Store rows in one transaction: all of them or, if interrupted, none."""
        values = [(image_hash, extractor, json.dumps(context, ensure_ascii=False))
                  for image_hash, extractor, context in rows]
        if not values:
            return
        connection = self.connection()
        with self._failing_as("written to"):
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(
                    "INSERT OR REPLACE INTO contexts (image_hash, extractor, context) "
                    "VALUES (?, ?, ?)", values)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def __len__(self) -> int:
        return self.connection().execute("SELECT COUNT(*) FROM contexts").fetchone()[0]

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None
