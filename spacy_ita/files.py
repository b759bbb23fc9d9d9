"""Output files written whole or not at all, so that a killed run never leaves
a truncated weights file, corpus or metrics file where a good one was."""
import os
from pathlib import Path
from typing import Union

import srsly


def replace_file(path: Union[str, Path], data: Union[bytes, str]) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder,
    flushed to disk, then renamed over `path`. Text is written as UTF-8."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf8")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file_:
            file_.write(data)
            file_.flush()
            os.fsync(file_.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_json(path: Union[str, Path], data) -> None:
    """`srsly.write_json`, atomically."""
    replace_file(path, srsly.json_dumps(data, indent=2) + "\n")
