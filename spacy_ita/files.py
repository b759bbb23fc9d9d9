"""Output files and folders written whole or not at all, so that a killed run
never leaves a truncated weights file, corpus, metrics file or pipeline folder
where a good one was."""
import ctypes
import errno
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Tuple, Union

import srsly


def replace_file(path: Union[str, Path], data: Union[bytes, str]) -> None:
    """Write `data` to `path` atomically (see `replacing`). Text is written as UTF-8."""
    if isinstance(data, str):
        data = data.encode("utf8")
    with replacing(path) as tmp:
        tmp.write_bytes(data)


@contextmanager
def replacing(path: Union[str, Path]) -> Iterator[Path]:
    """A new temporary file beside `path` for the caller to write: a fresh name,
    created exclusively (never a file or link already there), with the
    permissions `path` has (a new file's otherwise). Once written it is
    flushed to disk and renamed over `path`, and the folder synced; a symlink
    at `path` keeps pointing at its target, which is replaced. On an error it
    is removed and `path` left as it was."""
    path = Path(os.path.realpath(path))
    descriptor, tmp = _new_file_beside(path)
    try:
        try:
            if path.exists():
                os.fchmod(descriptor, stat.S_IMODE(path.stat().st_mode))
        finally:
            os.close(descriptor)
        yield tmp
        _sync_file(tmp)
        os.replace(tmp, path)
        _sync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)  # there only when the write failed


def _new_file_beside(path: Path) -> Tuple[int, Path]:
    """A new file, open for writing, named `.<name>.tmp-<random>` beside `path`,
    with the permissions a new file gets (the umask's, unlike mkstemp's 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def replace_json(path: Union[str, Path], data) -> None:
    """`srsly.write_json`, atomically."""
    replace_file(path, srsly.json_dumps(data, indent=2) + "\n")


_NEW, _OLD = "new", "old"  # inside a holder of `replace_directory`


def replace_directory(target: Union[str, Path], write: Callable[[Path], None]) -> None:
    """Let `write` fill a fresh folder next to `target`, then swap it in whole:
    whoever opens `target`, even after a kill mid-save, finds the old folder or
    the new one, never a half-written mix. The work happens in a holder folder
    `.NAME.tmp-<random>` created exclusively, so nothing already beside
    `target` is ever written over or removed."""
    target = Path(target)
    holder = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    fresh = holder / _NEW
    try:
        write(fresh)
        _sync_tree(fresh)
        if not target.exists():
            os.rename(fresh, target)
        elif not _exchange(fresh, target):  # when exchanged, `fresh` holds the old folder
            os.rename(target, holder / _OLD)
            os.rename(fresh, target)
        _sync_dir(target.parent)
    finally:
        shutil.rmtree(holder)


def recover_directory(target: Union[str, Path]) -> None:
    """Undo what a kill inside `replace_directory` left: put back a folder
    moved aside when there is no new one in its place, and drop the holders.
    A folder of a holder's name that holds anything else is not ours: kept."""
    target = Path(target)
    if not target.parent.exists():
        return
    for holder in sorted(target.parent.glob(f".{target.name}.tmp-*")):
        if not holder.is_dir() or holder.is_symlink():
            continue
        if not {path.name for path in holder.iterdir()} <= {_NEW, _OLD}:
            continue
        if (holder / _OLD).is_dir() and not target.exists():
            os.rename(holder / _OLD, target)
        shutil.rmtree(holder)


def _sync_tree(folder: Path) -> None:
    """fsync every file and folder below `folder`, so the swap publishes data
    that is on disk, not only in the page cache."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as file_:
                os.fsync(file_.fileno())
        elif path.is_dir():
            _sync_dir(path)
    _sync_dir(folder)


def _sync_file(path: Path) -> None:
    """Flush a written file to disk, so that a rename cannot outlive its content."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _load_renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # not Linux, or glibc < 2.28
        return None


_renameat2 = _load_renameat2()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step with Linux's renameat2(RENAME_EXCHANGE).
    False where the system or file system cannot; the caller then renames twice."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
