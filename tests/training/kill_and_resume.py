"""Kill-and-resume helpers for test_crash_recovery.py and the bench.

An extraction run (`python -m spacy_ita extract`, EfficientNet tags, batch
size 1, persistent cache) and a `python -m spacy_ita train` run (tiny
encoder, on helpers.training_setup) are started as subprocesses and killed
with SIGKILL while they work.

The context cache gets an extra table and trigger before the first run: every
row the extractor writes is logged, so a rerun that recomputed a finished
image would show up as a second log entry for the same image.
"""
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from PIL import Image

LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS contexts (
    image_hash TEXT NOT NULL,
    extractor TEXT NOT NULL,
    context TEXT NOT NULL,
    PRIMARY KEY (image_hash, extractor)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS insert_log (image_hash TEXT NOT NULL, extractor TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS log_insert AFTER INSERT ON contexts
BEGIN
    INSERT INTO insert_log (image_hash, extractor) VALUES (NEW.image_hash, NEW.extractor);
END;
"""


def make_images(folder: Path, n: int, size: int = 48) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        Image.effect_noise((size, size), 10 + i % 90).convert("RGB").rotate(i).save(path)
        paths.append(path)
    return paths


def prepare_cache(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.executescript(LOG_SCHEMA)
    connection.commit()
    connection.close()


def cache_state(path: Path) -> Dict[str, object]:
    """integrity_check, rows, logged inserts and images inserted more than once."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        integrity = connection.execute("PRAGMA integrity_check").fetchone()[0]
        rows = connection.execute("SELECT COUNT(*) FROM contexts").fetchone()[0]
        logged = connection.execute("SELECT COUNT(*) FROM insert_log").fetchone()[0]
        repeated = connection.execute(
            "SELECT COUNT(*) FROM (SELECT image_hash FROM insert_log "
            "GROUP BY image_hash, extractor HAVING COUNT(*) > 1)").fetchone()[0]
    finally:
        connection.close()
    return {"integrity": integrity, "rows": rows, "logged": logged, "repeated": repeated}


def count_rows(path: Path) -> int:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return connection.execute("SELECT COUNT(*) FROM contexts").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:
        return 0


def extract_command(images: Path, output: Path, cache: Path, batch_size: int = 1) -> List[str]:
    return [sys.executable, "-m", "spacy_ita", "extract", str(images), str(output),
            "--ocr", "none", "--cache", str(cache), "--batch-size", str(batch_size)]


def env() -> Dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def kill_extraction_when(images: Path, output: Path, cache: Path, min_rows: int,
                         timeout: float = 300, extra_delay: float = 0.0) -> Dict[str, object]:
    """Start an extraction, SIGKILL it once the cache holds min_rows rows."""
    process = subprocess.Popen(extract_command(images, output, cache), env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=str(output.parent))
    start = time.monotonic()
    try:
        while count_rows(cache) < min_rows:
            if process.poll() is not None:
                return {"killed": False, "returncode": process.returncode}
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"no {min_rows} cache rows after {timeout}s")
            time.sleep(0.02)
        if extra_delay:
            time.sleep(extra_delay)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    return {"killed": True, "returncode": process.returncode,
            "seconds": time.monotonic() - start}


def run_extraction(images: Path, output: Path, cache: Path, timeout: float = 600):
    return subprocess.run(extract_command(images, output, cache), env=env(), capture_output=True,
                          text=True, timeout=timeout, cwd=str(output.parent))


# --- spacy_ita train ---------------------------------------------------------

def train_command(setup: Dict[str, Path], eval_frequency: int, max_steps: int,
                  resume: bool = False) -> List[str]:
    """`python -m spacy_ita train` on the tiny setup (crash-safe checkpoints)."""
    return [sys.executable, "-m", "spacy_ita", "train", str(setup["config"]),
            "--output", str(setup["output"]), *(["--resume"] if resume else []),
            "--paths.train", str(setup["corpus"]), "--paths.dev", str(setup["corpus"]),
            "--training.max_steps", str(max_steps), "--training.max_epochs", "0",
            "--training.eval_frequency", str(eval_frequency),
            "--training.patience", "0"]


def kill_training(setup: Dict[str, Path], when: str = "between", delay: float = 0.0,
                  eval_frequency: int = 50, max_steps: int = 100000, resume: bool = False,
                  timeout: float = 300) -> Dict[str, object]:
    """Start `python -m spacy_ita train` and SIGKILL it once it has written a
    checkpoint of its own (at step 0 or the first after resuming, then every
    eval_frequency steps) and model-best exists. when="between": right then,
    unless a checkpoint folder is being written; when="after": `delay` seconds
    later, wherever that lands, a save included; when="saving": in the middle
    of writing a checkpoint folder. "killed" is True only when the SIGKILL
    ended a process that was still training.
    """
    output = setup["output"]
    command = train_command(setup, eval_frequency, max_steps, resume=resume)
    started_ns = time.time_ns()
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    def saved() -> bool:
        return _saved_since(output, started_ns) and (output / "model-best" / "meta.json").exists()

    ready = {"between": lambda: saved() and not _saving(output),
             "after": saved,
             "saving": lambda: saved() and _saving(output)}[when]
    start = time.monotonic()
    try:
        while not ready():
            if process.poll() is not None:
                return {"killed": False, "returncode": process.returncode,
                        "stderr": process.stderr.read()[-2000:]}
            if time.monotonic() - start > timeout:
                raise TimeoutError("no checkpoint written")
            time.sleep(0.002)
        time.sleep(delay if when == "after" else 0.0)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        being_written = _saving(output)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        process.stderr.close()
    return {"killed": process.returncode == -signal.SIGKILL, "returncode": process.returncode,
            "being_written": being_written, "seconds": time.monotonic() - start}


def _saved_since(output: Path, started_ns: int) -> bool:
    try:
        return (output / "model-last" / "meta.json").stat().st_mtime_ns > started_ns
    except FileNotFoundError:
        return False


def _saving(output: Path) -> List[str]:
    """What is being written now: checkpoint folders and training-state files
    under their temporary names (spacy_ita.files)."""
    found = []
    for folder in (output, output / "training-state"):
        try:
            found += [path.name for path in folder.iterdir() if ".tmp-" in path.name]
        except FileNotFoundError:
            pass
    return found


def resume_training(setup: Dict[str, Path], eval_frequency: int, max_steps: int,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """Rerun the killed training with --resume, to the end."""
    return subprocess.run(train_command(setup, eval_frequency, max_steps, resume=True),
                          env=env(), capture_output=True, text=True, timeout=timeout)


def checkpoint_status(output: Path, directory: str) -> Optional[str]:
    """None if the checkpoint is absent or loads and tags; else the error."""
    import spacy

    path = output / directory
    if not path.exists():
        return None
    try:
        nlp = spacy.load(path)
        doc = nlp("Kobe beat Boston")
        assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)
    except Exception as err:  # noqa: BLE001 -- any failure to load is the finding
        return f"{type(err).__name__}: {err}"[:300]
    return None
