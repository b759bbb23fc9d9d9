"""Kill-and-resume helpers for test_robust_crash.py and the bench.

An extraction run (`python -m spacy_ita extract`, EfficientNet tags, batch
size 1, persistent cache) and a `spacy train` run (tiny encoder) are started
as subprocesses and killed with SIGKILL while they work.

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

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "project" / "configs" / "ita.cfg"

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


# --- spacy train -------------------------------------------------------------

SAMPLE = """IMGID:1
Kobe\tB-PER
beat\tO
Boston\tB-ORG

IMGID:2
Sunset\tO
over\tO
Boston\tB-LOC

IMGID:3
Federer\tB-PER
wins\tO
again\tO

IMGID:4
Rain\tO
in\tO
New\tB-LOC
York\tI-LOC
"""


def training_setup(folder: Path, encoder: str) -> Dict[str, Path]:
    """A tiny corpus (via the converter) and the repo's CPU config with the encoder."""
    import spacy
    from spacy.tokens import DocBin

    from spacy_ita.converters import read_mner

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sample.txt").write_text(SAMPLE, encoding="utf8")
    (folder / "captions.txt").write_text("1.jpg :basketball\n2.jpg :a city at dusk\n",
                                         encoding="utf8")
    corpus = folder / "sample.spacy"
    docs = list(read_mner(folder / "sample.txt", folder / "captions.txt",
                          spacy.blank("en").vocab))
    DocBin(store_user_data=True, docs=docs).to_disk(corpus)
    config = CONFIG.read_text(encoding="utf8").replace(
        '[components.ita_ner.model.name]\n@misc = "spacy-ita.bundled_encoder.v1"\n', ""
    ).replace('@architectures = "spacy-ita.ItaTagger.v1"\n',
              f'@architectures = "spacy-ita.ItaTagger.v1"\nname = "{encoder}"\n')
    (folder / "config.cfg").write_text(config, encoding="utf8")
    return {"config": folder / "config.cfg", "corpus": corpus, "output": folder / "output"}


def train_command(setup: Dict[str, Path], eval_frequency: int, max_steps: int) -> List[str]:
    return [sys.executable, "-m", "spacy", "train", str(setup["config"]),
            "--output", str(setup["output"]),
            "--paths.train", str(setup["corpus"]), "--paths.dev", str(setup["corpus"]),
            "--training.max_steps", str(max_steps), "--training.max_epochs", "0",
            "--training.eval_frequency", str(eval_frequency),
            "--training.patience", "0"]


def _snapshot(output: Path):
    files = []
    for directory in ("model-last", "model-best"):
        for path in sorted((output / directory).rglob("*")):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            files.append((str(path), stat.st_size, stat.st_mtime_ns))
    return files


def kill_training(setup: Dict[str, Path], when: str = "quiet", delay: float = 0.0,
                  eval_frequency: int = 50, max_steps: int = 100000,
                  timeout: float = 300) -> Dict[str, object]:
    """Start `spacy train` and SIGKILL it.

    when="quiet": after model-best exists and no checkpoint file changed for
    0.4 s (spaCy checkpoints at step 0, then every eval_frequency steps, so
    this lands between two; plus `delay`); when="after": `delay` seconds after
    the first checkpoint appeared (may hit a checkpoint being written).
    """
    output = setup["output"]
    process = subprocess.Popen(train_command(setup, eval_frequency, max_steps), env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    try:
        while not (output / "model-best" / "config.cfg").exists():
            if process.poll() is not None:
                return {"killed": False, "returncode": process.returncode,
                        "stderr": process.stderr.read()[-2000:]}
            if time.monotonic() - start > timeout:
                raise TimeoutError("no checkpoint written")
            time.sleep(0.02)
        if when == "quiet":
            last, since = _snapshot(output), time.monotonic()
            while time.monotonic() - since < 0.4:
                time.sleep(0.05)
                now = _snapshot(output)
                if now != last:
                    last, since = now, time.monotonic()
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        process.stderr.close()
    return {"killed": True, "returncode": process.returncode,
            "seconds": time.monotonic() - start}


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
