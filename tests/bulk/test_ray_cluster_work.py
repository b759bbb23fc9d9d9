"""`apply --engine ray` on a simulated cluster (Ray's `cluster_utils.Cluster`
on this machine): a head with no CPU for the driver and two worker nodes of
one CPU each. A worker of one CPU holds torch, OpenCV and onnxruntime to one
thread; a node lost mid-job loses and doubles no row.

Where each post went is logged by bench/where_probe.py's probes (not in the
output), which the pipelines here carry at both ends.
"""
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from PIL import Image  # noqa: E402
from helpers import trained_pipeline  # noqa: E402

from spacy_ita.bulk import PipelineSettings, RaySettings, apply  # noqa: E402

WHERE_CODE = str(Path(__file__).resolve().parents[2] / "bench" / "where_probe.py")
TEXTS = ["Kobe scores again", "Sunny morning in Boston", "Google opens an office in Zurich",
         "Lakers beat Boston tonight"]


@pytest.fixture(scope="module")
def where_probe():
    """bench/where_probe.py, imported as `apply` imports it in the workers."""
    import spacy

    return spacy.util.import_file("spacy_ita_apply_code", WHERE_CODE)


@pytest.fixture(scope="module")
def cluster():
    """A head of 0 CPUs (the driver's) and two worker nodes of 1 CPU; workers
    run at the tests' priority (Ray's default nice +15 starves them here)."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_worker_niceness", "0")
        # A lost node is declared dead after 3 missed checks of 0.5 s (Ray's default: 5 of 3 s).
        health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "_system_config": health})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        yield cluster
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def trained(tiny_encoder, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("trained") / "model"
    trained_pipeline(tiny_encoder).to_disk(path)
    return str(path)


def write_posts(path: Path, n: int, image: str = None) -> Path:
    import json

    path.write_text("".join(json.dumps({"id": f"p{i}", "text": TEXTS[i % len(TEXTS)],
                                        "image": image}) + "\n" for i in range(n)))
    return path


def read_rows(path: Path):
    import json

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(rows, key=lambda row: row["input_row"])


def test_a_one_cpu_worker_holds_torch_opencv_and_onnxruntime_to_one_thread(
        cluster, where_probe, trained, tmp_path):
    """RapidOCR builds its onnxruntime sessions in the actor; with one CPU
    they, torch and OpenCV must take one thread each, not one per core."""
    import spacy

    Image.new("RGB", (64, 32), (250, 250, 250)).save(tmp_path / "white.png")
    nlp = spacy.load(trained)
    nlp.add_pipe("ita_context", first=True, config={
        "ocr_text": {"@spacy_ita_extractors": "spacy-ita.rapidocr.v1"}, "object_tags": None})
    nlp.to_disk(tmp_path / "ocr")
    log = tmp_path / "where.log"
    model = where_probe.with_where_probes(str(tmp_path / "ocr"), str(log), str(tmp_path / "m"))
    summary = apply(model, write_posts(tmp_path / "posts.jsonl", 4, "white.png"),
                    tmp_path / "out.jsonl", engine=RaySettings(workers=1, worker_cpus=1),
                    pipeline=PipelineSettings(code=WHERE_CODE), progress=False)
    assert summary.n_written == 4 and summary.n_image_errors == 0
    [share] = where_probe.share_by_process(where_probe.read_where_log(str(log))).values()
    threads = share["threads"]
    assert threads["torch"] == 1 and threads["opencv"] == 1, threads
    assert threads["onnxruntime_intra_op"] and set(threads["onnxruntime_intra_op"]) == {1}, \
        threads


def test_a_node_lost_mid_job_loses_and_doubles_no_row(cluster, where_probe, trained, tmp_path):
    """One worker node is removed while both tag (each doc takes 50 ms): its
    actor's batch is retried on the other node, which finishes the job alone,
    and the rows are the in-process run's, each once."""
    log = tmp_path / "where.log"
    model = where_probe.with_where_probes(trained, str(log), str(tmp_path / "m"), delay=0.05)
    source = write_posts(tmp_path / "posts.jsonl", 48)
    options = dict(pipeline=PipelineSettings(add_context=False, code=WHERE_CODE),
                   batch_size=4, progress=False)
    apply(model, source, tmp_path / "local.jsonl", **options)
    log.unlink()
    removed = []
    remover = threading.Thread(target=_remove_a_busy_node, args=(cluster, log, removed))
    remover.start()
    try:
        summary = apply(model, source, tmp_path / "ray.jsonl",
                        engine=RaySettings(workers=2, worker_cpus=1), **options)
    finally:
        remover.join()
    assert removed, "no node was removed while the job ran"
    assert summary.n_written == 48 and summary.n_errors == 0
    assert read_rows(tmp_path / "ray.jsonl") == read_rows(tmp_path / "local.jsonl")
    node, when = removed[0]
    later = [record for record in where_probe.read_where_log(str(log))
             if record["edge"] == "end" and record["time"] > when]
    assert later and {record["node"] for record in later} != {node}, "the job had ended"


def _remove_a_busy_node(cluster, log: Path, removed: list, timeout: float = 60.0) -> None:
    """Once a worker node has tagged 8 posts, remove it (all its processes
    killed) and note (its id, when)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            import json

            ends = [json.loads(line)["node"] for line in log.read_text().splitlines()
                    if '"edge": "end"' in line]
            busy = [node for node in set(ends) if ends.count(node) >= 8]
            if busy:
                node = next(n for n in cluster.worker_nodes if n.node_id == busy[0])
                cluster.remove_node(node, allow_graceful=False)
                removed.append((busy[0], time.time()))
                return
        time.sleep(0.05)
