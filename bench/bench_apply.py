"""Posts per second of `apply` (text + image context + tagging), and where the
work goes: in-process with 1 and 2 torch threads and with --n-process 2; on a
local Ray with 1 and 2 workers; on a simulated cluster (Ray's
`cluster_utils.Cluster` on this machine: a head of 0 CPUs for the driver and
worker nodes of 1 CPU) of 1 node and of 2 nodes, and of 2 nodes with one
removed mid-job; then what 10 million posts would take at the per-worker rate.

The posts are Twitter-2015's (train, valid, test in that order; the real
images are not public), each with its own rendered image: a sign, poster,
jersey, logo or captioned skimage photo as in the demo, lettered with words of
the post, saved as a 288x192 PNG. The pipeline is the default `ita_context`
(RapidOCR + EfficientNet tags) before `ita_ner` on the bundled
all-MiniLM-L6-v2, freshly initialised with the four labels unless --model
names a trained one (speed does not depend on the weights). No context cache:
every run extracts every image. Every run must write the same rows; the
script says whether they did.

Accounting, per run: the wall seconds and posts/s of the whole call (start
included); the seconds until the first row (the start: Ray, the workers'
pipelines, the first batch); the steady rate after it; per worker (node and
process), from bench/where_probe.py's probes at both ends of the pipeline (a
log beside the output, not the rows): posts, busy seconds, CPU seconds while
busy, posts per busy second and the threads torch, OpenCV and onnxruntime were
held to; the driver's CPU seconds per post (reading, writing and, under Ray,
Ray Data's scheduling); the CPU seconds of the whole machine per post
(/proc/stat; only meaningful on a quiet machine). Ray Data's own `ds.stats()`
of each Ray run goes into the JSON.

    python bench/bench_apply.py --posts 1500      # every run
    python bench/bench_apply.py --posts 100 --runs local_1_thread ray_2_workers
"""
import argparse
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "project" / "scripts"))  # demo_corpus
# Ray starts its workers at nice +15 by default; level with the in-process runs.
os.environ.setdefault("RAY_worker_niceness", "0")

import spacy  # noqa: E402
import srsly  # noqa: E402
from PIL import Image  # noqa: E402

import spacy_ita  # noqa: E402,F401
from spacy_ita.bulk import LocalSettings, PipelineSettings, RaySettings, apply  # noqa: E402
from spacy_ita.context.config import context_config  # noqa: E402
from spacy_ita.corpus.mner import read_mner  # noqa: E402
from demo_corpus import KINDS, SAVED_SIZE, render_image  # noqa: E402  (project/scripts)

REPO = Path(__file__).resolve().parents[1]
WHERE_CODE = str(Path(__file__).resolve().parent / "where_probe.py")
where_probe = spacy.util.import_file("spacy_ita_apply_code", WHERE_CODE)  # as apply imports it
DATA = REPO.parent / "shared" / "data" / "twitter2015"
LABELS = ["LOC", "ORG", "OTHER", "PER"]
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera"]
# name: (engine settings, worker nodes of 1 CPU for a simulated cluster or None
# for a local Ray or none, remove a node mid-job)
RUNS = {
    "local_1_thread": (LocalSettings(threads=1), None, False),
    "local_2_threads": (LocalSettings(threads=2), None, False),
    "n_process_2": (LocalSettings(n_process=2), None, False),
    "ray_1_worker": (RaySettings(workers=1), None, False),
    "ray_2_workers": (RaySettings(workers=2), None, False),
    "cluster_1_node": (RaySettings(workers=1), 1, False),
    "cluster_2_nodes": (RaySettings(workers=2), 2, False),
    "cluster_2_nodes_one_removed": (RaySettings(workers=2), 2, True),
}
TARGET_POSTS = 10_000_000


def twitter_posts(data: Path, limit: int) -> List[Dict[str, Any]]:
    posts = []
    for split in ("train", "valid", "test"):
        path = data / f"{split}.txt"
        if not path.exists():
            sys.exit(f"Data not found: {path} (see ../shared/data/README.md; or give --data)")
        for doc in read_mner(path):
            posts.append({"id": f"{split}-{doc._.image_id}", "text": doc.text})
            if len(posts) == limit:
                return posts
    return posts


def recipe(post: Dict[str, Any], index: int) -> Dict[str, Any]:
    """A demo-style image recipe lettered with (up to) three words of the post."""
    kind = KINDS[index % len(KINDS)]
    words = [w for w in post["text"].split() if w.isalpha()][:3] or ["HELLO"]
    if kind == "photo":
        return {"kind": kind, "photo": PHOTOS[index % len(PHOTOS)], "lines": [" ".join(words)]}
    return {"kind": kind, "lines": [words[0].upper(), " ".join(words[1:]) or str(index)]}


def write_input(posts: List[Dict[str, Any]], folder: Path) -> Path:
    images = folder / "images"
    images.mkdir(parents=True)
    for index, post in enumerate(posts):
        image = render_image(recipe(post, index)).resize(SAVED_SIZE, Image.Resampling.LANCZOS)
        image.save(images / f"{index}.png")
        post["image"] = f"images/{index}.png"
    path = folder / "posts.jsonl"
    srsly.write_jsonl(path, posts)
    return path


def build_model(folder: Path, trained: Optional[str]) -> str:
    """The pipeline to time, with its ita_context (the one `apply` would add)
    and the where probes at both ends."""
    if trained:
        nlp = spacy.load(trained)
    else:
        nlp = spacy.blank("en")
        nlp.add_pipe("ita_ner")
        nlp.get_pipe("ita_ner").initialize(lambda: [], nlp=nlp, labels=LABELS)
    if "ita_context" not in [nlp.get_pipe_meta(name).factory for name in nlp.pipe_names]:
        nlp.add_pipe("ita_context", first=True, config=context_config())
    nlp.to_disk(folder / "model")
    return where_probe.with_where_probes(str(folder / "model"), str(folder / "where.log"),
                                         str(folder / "model-where"))


def machine_cpu_seconds() -> float:
    """CPU seconds all cores of this machine have been busy since boot."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class RayStats(logging.Handler):
    """Keeps the `ds.stats()` the Ray engine logs at DEBUG."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.texts: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


def timed_apply(model: str, source: Path, out: Path, engine, batch_size: int,
                during: Optional[Callable[[threading.Event], None]] = None) -> Dict[str, Any]:
    """One `apply` call and its accounting (see the module docstring); `during`
    runs beside it in a thread, told by an event when the call is over."""
    log = Path(model).parent / "where.log"
    log.unlink(missing_ok=True)
    finished = threading.Event()
    helper = threading.Thread(target=during, args=(finished,)) if during else None
    load_before, cpu_before = os.getloadavg()[0], machine_cpu_seconds()
    driver_before = resource.getrusage(resource.RUSAGE_SELF)
    if helper:
        helper.start()
    try:
        summary = apply(model, source, out, engine=engine, batch_size=batch_size,
                        pipeline=PipelineSettings(code=WHERE_CODE), progress=False)
    finally:
        finished.set()
        if helper:
            helper.join()
    seconds = summary.seconds
    driver = resource.getrusage(resource.RUSAGE_SELF)
    driver_cpu = (driver.ru_utime - driver_before.ru_utime
                  + driver.ru_stime - driver_before.ru_stime)
    n = summary.n_written
    steady = seconds - summary.seconds_to_first_row
    return {"posts": n, "seconds": seconds, "posts_per_second": n / seconds,
            "seconds_to_first_row": summary.seconds_to_first_row,
            "steady_posts_per_second": (n - batch_size) / steady if steady > 0 else None,
            "driver_cpu_seconds_per_post": driver_cpu / n,
            "machine_cpu_seconds_per_post": (machine_cpu_seconds() - cpu_before) / n,
            "errors": summary.n_errors, "image_errors": summary.n_image_errors,
            "workers": where_probe.share_by_process(where_probe.read_where_log(str(log))),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def remove_a_node_midway(cluster, log: Path, after_posts: int):
    """A task that removes the worker node of the first post once `after_posts`
    posts are tagged, and notes which and after how many in `removed`."""
    removed: Dict[str, Any] = {}

    def remove(finished: threading.Event) -> None:
        while not removed and not finished.is_set():
            ends = [json.loads(line) for line in log.read_text().splitlines()
                    if '"edge": "end"' in line] if log.exists() else []
            if len(ends) >= after_posts:
                node = next(n for n in cluster.worker_nodes if n.node_id == ends[0]["node"])
                cluster.remove_node(node, allow_graceful=False)
                removed.update(node=ends[0]["node"][:8], after_posts=len(ends))
            time.sleep(0.2)

    remove.removed = removed
    return remove


def run_one(name: str, model: str, source: Path, folder: Path, batch_size: int,
            n_posts: int) -> Dict[str, Any]:
    """One run of RUNS, with its Ray (local or a simulated cluster) started
    and stopped around it."""
    import ray  # noqa: F401  (only the Ray runs need it)
    from ray.cluster_utils import Cluster

    engine, nodes, remove = RUNS[name]
    out = folder / f"{name}.jsonl"
    if nodes is None:  # apply starts (and stops) a local Ray itself, in its time
        return timed_apply(model, source, out, engine, batch_size)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0,
                                                            "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        during = remove_a_node_midway(cluster, Path(model).parent / "where.log",
                                      n_posts // 3) if remove else None
        result = timed_apply(model, source, out, engine, batch_size, during)
        if during:
            result["removed"] = during.removed
        return result
    finally:
        ray.shutdown()
        cluster.shutdown()


def projection(rate_per_worker: float) -> Dict[str, Any]:
    """Hours for TARGET_POSTS at a per-worker rate, and workers for a deadline."""
    hours = {workers: TARGET_POSTS / (rate_per_worker * workers) / 3600
             for workers in (1, 10, 50, 100, 500)}
    workers_for = {deadline: int(-(-TARGET_POSTS // (rate_per_worker * deadline * 3600)))
                   for deadline in (24, 8, 1)}
    return {"rate_per_worker": rate_per_worker, "hours_by_workers": hours,
            "workers_by_deadline_hours": workers_for}


def per_worker_rate(results: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The mean posts per busy second of the 1-CPU Ray workers of the widest
    Ray run (each held to its CPU, sharing the machine as workers would)."""
    for name in ("cluster_2_nodes", "ray_2_workers", "cluster_1_node", "ray_1_worker"):
        rates = [worker["posts_per_busy_second"]
                 for worker in results.get(name, {}).get("workers", {}).values()
                 if worker["posts_per_busy_second"]]
        if rates:
            return {"run": name, "rate": sum(rates) / len(rates)}
    return None


RATIOS = {  # the targets: (faster run, slower run, target on the steady rate)
    "ray 2 workers / ray 1 worker": ("ray_2_workers", "ray_1_worker", 1.7),
    "ray 2 workers / in-process 2 threads": ("ray_2_workers", "local_2_threads", 0.9),
    "ray 2 workers / n_process 2": ("ray_2_workers", "n_process_2", 0.9),
    "cluster 2 nodes / 1 node": ("cluster_2_nodes", "cluster_1_node", 1.6),
}


def ratios(results: Dict[str, Any]) -> Dict[str, Any]:
    """The ratios of the issue's targets, on the steady rate (start left out:
    it is reported on its own) and on the whole call."""
    found = {}
    for label, (fast, slow, target) in RATIOS.items():
        if fast in results and slow in results:
            a, b = results[fast], results[slow]
            steady = (a["steady_posts_per_second"] / b["steady_posts_per_second"]
                      if a["steady_posts_per_second"] and b["steady_posts_per_second"] else None)
            found[label] = {"steady": steady, "whole_call": a["posts_per_second"]
                            / b["posts_per_second"], "target": target}
    return found


def print_report(results: Dict[str, Any], found: Dict[str, Any], plan, n_posts: int,
                 batch_size: int) -> None:
    print(f"{n_posts} Twitter-2015 posts with rendered images; {platform.machine()}, "
          f"{os.cpu_count()} CPUs; batch size {batch_size}\n")
    print("| run | posts/s (whole) | steady posts/s | s to first row | driver CPU s/post "
          "| machine CPU s/post | same rows | load before / after "
          "| per worker: posts, posts/busy s, CPU/busy, threads (torch/cv2/ort) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        workers = "; ".join(
            f"{where}: {w['posts']}, {w['posts_per_busy_second'] or 0:.2f}, "
            f"{w['cpu_per_busy_second'] or 0:.2f}, {_threads(w['threads'])}"
            for where, w in r["workers"].items())
        removed = f" (node {r['removed']['node']} removed after {r['removed']['after_posts']})" \
            if r.get("removed") else ""
        print(f"| {name}{removed} | {r['posts_per_second']:.2f} "
              f"| {r['steady_posts_per_second'] or 0:.2f} | {r['seconds_to_first_row']:.1f} "
              f"| {r['driver_cpu_seconds_per_post']:.3f} "
              f"| {r['machine_cpu_seconds_per_post']:.3f} "
              f"| {'yes' if r['same_rows_as_first_run'] else 'NO'} "
              f"| {r['load_before']:.1f} / {r['load_after']:.1f} | {workers} |")
    for label, ratio in found.items():
        steady = f"{ratio['steady']:.2f}x" if ratio["steady"] else "n/a"
        print(f"{label}: {steady} steady, {ratio['whole_call']:.2f}x whole call "
              f"(target {ratio['target']}x)")
    if plan:
        print(f"\n10 million posts at {plan['rate_per_worker']:.2f} posts/s per 1-CPU worker "
              f"({plan['from_run']}): "
              + ", ".join(f"{w} workers {h:,.0f} h" for w, h in plan["hours_by_workers"].items())
              + "; workers for a deadline: "
              + ", ".join(f"{d} h: {w:,}" for d, w in plan["workers_by_deadline_hours"].items()))


def _threads(threads: Optional[Dict[str, Any]]) -> str:
    if not threads:
        return "?"
    ort = ",".join(map(str, sorted(set(threads["onnxruntime_intra_op"])))) or "-"
    return f"{threads['torch']}/{threads['opencv']}/{ort}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=1500)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--model", help="A trained pipeline (default: a fresh ita_ner).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", type=Path, default=DATA,
                        help="Folder of Twitter-2015's train/valid/test.txt.")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results"
                        / "apply_scaling.json", help="Where the results go, as JSON.")
    args = parser.parse_args()
    stats = RayStats()
    logging.getLogger("spacy_ita.bulk.ray_engine").addHandler(stats)
    logging.getLogger("spacy_ita.bulk.ray_engine").setLevel(logging.DEBUG)
    folder = Path(tempfile.mkdtemp(prefix="bench_apply_"))
    try:
        posts = twitter_posts(args.data, args.posts)
        source = write_input(posts, folder)
        model = build_model(folder, args.model)
        results: Dict[str, Any] = {}
        reference = None
        for name in args.runs:
            stats.texts.clear()
            results[name] = run_one(name, model, source, folder, args.batch_size, len(posts))
            rows = sorted(srsly.read_jsonl(folder / f"{name}.jsonl"),
                          key=lambda row: row["input_row"])
            reference = reference if reference is not None else rows
            results[name]["same_rows_as_first_run"] = rows == reference
            results[name]["ray_data_stats"] = "\n".join(stats.texts) or None
            print(f"{name}: {results[name]['posts_per_second']:.2f} posts/s", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rate = per_worker_rate(results)
    plan = dict(projection(rate["rate"]), from_run=rate["run"]) if rate else None
    found = ratios(results)
    print_report(results, found, plan, len(posts), args.batch_size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"posts": len(posts), "batch_size": args.batch_size,
                                       "cpus": os.cpu_count(), "runs": results,
                                       "ratios": found, "projection": plan}, indent=2) + "\n")


if __name__ == "__main__":
    main()
