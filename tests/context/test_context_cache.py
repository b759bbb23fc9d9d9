"""The SQLite context cache: round trips, several processes, killed writers, bad rows, keys."""
import json
import multiprocessing
import os
import pickle
import signal
import sqlite3
import time

import pytest

from spacy_ita.context.cache import ContextCache

# Forked workers start at once (no re-import of torch and spaCy); they only use sqlite.
FORK = multiprocessing.get_context("fork")


def test_round_trip_and_wal_mode(tmp_path):
    cache = ContextCache(str(tmp_path / "sub" / "c.sqlite"))
    assert cache.get("abc", "ocr") is None
    cache.put("abc", "ocr", {"ocr_text": ["STAPLES CENTER", "ünïcode"]})
    cache.put("abc", "tags", {"object_tags": []})
    assert cache.get("abc", "ocr") == {"ocr_text": ["STAPLES CENTER", "ünïcode"]}
    assert cache.get("abc", "tags") == {"object_tags": []}
    assert len(cache) == 2
    mode = cache.connection().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_the_cache_pickles_without_its_connection(tmp_path):
    cache = ContextCache(str(tmp_path / "c.sqlite"))
    cache.put("h", "k", {"captions": ["x"]})
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.get("h", "k") == {"captions": ["x"]}


def _write_rows(path: str, worker: int, n: int) -> None:
    cache = ContextCache(path)
    for i in range(n):
        cache.put(f"image-{worker}-{i}", "ocr", {"ocr_text": [f"{worker}:{i}"]})
        cache.get(f"image-{(worker + 1) % 4}-{i}", "ocr")


def test_several_processes_write_at_once(tmp_path):
    path = str(tmp_path / "c.sqlite")
    ContextCache(path).put("warm", "up", {})
    workers = [FORK.Process(target=_write_rows, args=(path, w, 40)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    cache = ContextCache(path)
    assert len(cache) == 4 * 40 + 1
    assert cache.get("image-3-39", "ocr") == {"ocr_text": ["3:39"]}


def _write_forever(path: str, started) -> None:
    cache = ContextCache(path)
    batch = 0
    while True:
        cache.put_many([(f"img-{batch}-{i}", "ocr", {"ocr_text": ["x" * 500]})
                        for i in range(50)])
        batch += 1
        started.set()


def test_a_killed_writer_leaves_a_valid_cache(tmp_path):
    path = str(tmp_path / "c.sqlite")
    ContextCache(path).put("before", "ocr", {"ocr_text": ["kept"]})
    started = FORK.Event()
    writer = FORK.Process(target=_write_forever, args=(path, started))
    writer.start()
    assert started.wait(timeout=60)
    time.sleep(0.5)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = connection.execute("SELECT image_hash, context FROM contexts").fetchall()
    assert all(json.loads(context) for _, context in rows)
    written = len(rows) - 1
    assert written > 0 and written % 50 == 0  # whole transactions only
    cache = ContextCache(path)
    assert cache.get("before", "ocr") == {"ocr_text": ["kept"]}
    cache.put("after", "ocr", {"ocr_text": ["still writable"]})
    assert cache.get("after", "ocr") == {"ocr_text": ["still writable"]}


def test_the_key_tells_engines_and_weights_apart(tmp_path):
    """Two weights files of one name and size, or another engine version, must
    not share cached answers."""
    from spacy_ita.context.ocr import make_rapidocr
    from spacy_ita.context.registry import package_version
    from spacy_ita.context.tags import EfficientNetTagger

    keys = []
    for content in (b"a" * 1000, b"b" * 1000):
        folder = tmp_path / content[:1].decode()
        folder.mkdir()
        (folder / "model.pth").write_bytes(content)
        keys.append(EfficientNetTagger(3, 0.1, str(folder / "model.pth"), None).cache_key)
    assert keys[0] != keys[1]
    assert make_rapidocr().settings()["engine"] == package_version("rapidocr") != "not installed"


@pytest.mark.parametrize("row", ["not json", "[1, 2]", '{"ocr_text": "STOP"}',
                                 '{"bogus": ["x"]}', '{"ocr_text": [1]}', "[" * 100_000])
def test_a_row_that_is_not_a_context_is_a_miss_and_is_overwritten(tmp_path, row):
    """Another tool's row or a hand edit is computed again rather than read
    as a context (or stopping the run); the new context replaces it."""
    cache = ContextCache(str(tmp_path / "c.sqlite"))
    cache.put("h", "ocr", {})
    cache.connection().execute("UPDATE contexts SET context = ?", (row,))
    assert cache.get("h", "ocr") is None
    cache.put("h", "ocr", {"ocr_text": ["STOP"]})
    assert cache.get("h", "ocr") == {"ocr_text": ["STOP"]}
    cache.put("h", "knowledge", {"knowledge": ["Kobe Bryant"]})  # ita_knowledge's rows
    assert cache.get("h", "knowledge") == {"knowledge": ["Kobe Bryant"]}


def test_a_local_model_folder_is_keyed_by_place_and_content(tmp_path, monkeypatch):
    """`./model` in two projects, or one folder saved again with new weights,
    must not share cached answers; a hub name stays as written."""
    from spacy_ita.context.captions import HFCaptioner
    from spacy_ita.context.tags import HFObjectDetector

    def keys():
        return (HFCaptioner("./model", 30, "cpu", None, 8).cache_key,
                HFObjectDetector("./model", 0.5, 10, "cpu", None, 8).cache_key)

    for project in ("a", "b"):
        model = tmp_path / project / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text('{"model_type": "blip"}')
        (model / "model.safetensors").write_bytes(project.encode() * 1000)
    monkeypatch.chdir(tmp_path / "a")
    first = keys()
    assert str(tmp_path / "a" / "model") in first[0]
    (tmp_path / "a" / "model" / "README.md").write_text("notes")  # not the model
    assert keys() == first
    monkeypatch.chdir(tmp_path / "b")
    other_project = keys()
    weights = tmp_path / "a" / "model" / "model.safetensors"
    weights.write_bytes(b"c" * 1000)  # new weights, same size
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    monkeypatch.chdir(tmp_path / "a")
    retrained = keys()
    for i in range(2):
        assert len({first[i], other_project[i], retrained[i]}) == 3
    assert '"model": "org/captioner"' in HFCaptioner("org/captioner", 30, "cpu", None, 8).cache_key
