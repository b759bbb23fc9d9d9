"""`bench_where`: a pipeline component that logs, per doc, where and when it
was tagged, so that bench/bench_apply.py and the Ray tests can see how the
work was shared without touching the output rows. Imported through `code=`.

Put one at each end of the pipeline (`edge` "start" and "end"): a worker's
batch is busy from its first doc's "start" to its last doc's "end". Each line
of the log is a JSON object: the edge, the Ray node ("local" outside Ray), the
process, the wall clock and the process's CPU seconds when the doc passed,
and, at the end, until found once per process, the threads its compute
libraries were held to: torch's, OpenCV's and the intra-op threads of every
onnxruntime session (RapidOCR's) the process holds. `delay` sleeps that many
seconds per doc, for tests that need a job still running.
"""
import gc
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from spacy.language import Language


class WhereProbe:
    def __init__(self, log_path: str, edge: str, delay: float):
        if edge not in ("start", "end"):
            raise ValueError(f"edge must be 'start' or 'end', got {edge!r}")
        self.log_path = log_path
        self.edge = edge
        self.delay = delay
        self.threads: Optional[Dict[str, Any]] = None  # found once the OCR sessions exist

    def __call__(self, doc):
        if self.delay:
            time.sleep(self.delay)
        record = {"edge": self.edge, "node": _node_id(), "pid": os.getpid(),
                  "time": time.time(), "cpu": time.process_time(), "text": doc.text}
        if self.edge == "end" and self.threads is None:
            threads = held_threads()
            record["threads"] = threads
            if threads["onnxruntime_intra_op"]:
                self.threads = threads
        with open(self.log_path, "a", encoding="utf8") as log:
            log.write(json.dumps(record) + "\n")
        return doc


def held_threads() -> Dict[str, Any]:
    """The threads torch and OpenCV use in this process, and each onnxruntime
    session's intra-op threads (0: onnxruntime's default, a thread per core)."""
    threads: Dict[str, Any] = {"torch": None, "opencv": None, "onnxruntime_intra_op": []}
    if "torch" in sys.modules:
        threads["torch"] = sys.modules["torch"].get_num_threads()
    if "cv2" in sys.modules:
        threads["opencv"] = sys.modules["cv2"].getNumThreads()
    if "onnxruntime" in sys.modules:
        session_type = sys.modules["onnxruntime"].InferenceSession
        # type(), not isinstance: the latter trips deprecation warnings of some torch objects
        sessions = [obj for obj in gc.get_objects() if issubclass(type(obj), session_type)]
        threads["onnxruntime_intra_op"] = [session.get_session_options().intra_op_num_threads
                                           for session in sessions]
    return threads


def _node_id() -> str:
    """The Ray node of this process ("local" outside Ray)."""
    ray = sys.modules.get("ray")  # imported only where Ray runs this process
    return ray.get_runtime_context().get_node_id() if ray and ray.is_initialized() else "local"


def read_where_log(path: str) -> List[Dict[str, Any]]:
    """The records of a where log, oldest first."""
    with open(path, encoding="utf8") as log:
        return [json.loads(line) for line in log if line.strip()]


def share_by_process(records: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per "node/process": posts tagged, busy seconds (each batch from its
    first "start" to its last "end"), CPU seconds while busy, the posts per
    busy second and the threads the process was held to."""
    by_process: Dict[str, List[Dict[str, Any]]] = {}
    for record in records:
        by_process.setdefault(f"{record['node'][:8]}/{record['pid']}", []).append(record)
    return {name: _share(sorted(own, key=lambda record: record["time"]))
            for name, own in by_process.items()}


def _share(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One process's share: its batches are the runs of "start" records, each
    closed by the "end" records that follow."""
    batches: List[List[Dict[str, Any]]] = []
    for previous, record in zip([None] + records, records):
        if record["edge"] == "start" and (previous is None or previous["edge"] == "end"):
            batches.append([])
        if batches:  # an "end" before any "start" belongs to no batch seen whole
            batches[-1].append(record)
    busy = sum(batch[-1]["time"] - batch[0]["time"] for batch in batches)
    cpu = sum(batch[-1]["cpu"] - batch[0]["cpu"] for batch in batches)
    posts = sum(record["edge"] == "end" for record in records)
    threads = [record["threads"] for record in records if "threads" in record]
    return {"posts": posts, "batches": len(batches), "busy_seconds": busy, "cpu_seconds": cpu,
            "cpu_per_busy_second": cpu / busy if busy else None,
            "posts_per_busy_second": posts / busy if busy else None,
            "threads": threads[-1] if threads else None}


@Language.factory("bench_where", default_config={"log_path": "", "edge": "end", "delay": 0.0})
def make_where_probe(nlp, name, log_path: str, edge: str, delay: float) -> WhereProbe:
    return WhereProbe(log_path, edge, delay)


def with_where_probes(model: str, log_path: str, output: str, delay: float = 0.0) -> str:
    """Save `model` to `output` with a probe at each end logging to `log_path`
    (the end one sleeping `delay` s per doc); its path, for `apply`. Give it
    a model with its `ita_context`: one that `apply` added would come before
    the start probe."""
    import spacy

    nlp = spacy.load(model)
    nlp.add_pipe("bench_where", name="where_start", first=True,
                 config={"log_path": log_path, "edge": "start"})
    nlp.add_pipe("bench_where", name="where_end", last=True,
                 config={"log_path": log_path, "edge": "end", "delay": delay})
    nlp.to_disk(output)
    return output
