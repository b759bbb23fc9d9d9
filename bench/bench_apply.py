"""Posts per second of `apply` (text + image context + tagging), in-process,
with --n-process 2, and on a local Ray with 1 and 2 workers, all in one run;
then what 10 million posts would take, from the measured per-worker rates.

The posts are Twitter-2015's (train, valid, test in that order; the real
images are not public), each with its own rendered image: a sign, poster,
jersey, logo or captioned skimage photo as in the demo, lettered with words of
the post, saved as a 288x192 PNG. The pipeline is the default `ita_context`
(RapidOCR + EfficientNet tags, added by `apply`) before `ita_ner` on the
bundled all-MiniLM-L6-v2, freshly initialised with the four labels unless
--model names a trained one (speed does not depend on the weights). No context
cache: every run extracts every image. Every configuration must write the
same rows; the script says whether they did, and how many posts each worker
(Ray node and process) tagged, from a log that a small component of
bench/where_probe.py keeps beside the output.

    python bench/bench_apply.py                      # 5,000 posts, all four runs
    python bench/bench_apply.py --posts 200 --runs local n_process_2
"""
import argparse
import json
import os
from collections import Counter
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "project" / "scripts"))  # demo_corpus
# Ray starts its workers at nice +15 by default; level with the in-process runs.
os.environ.setdefault("RAY_worker_niceness", "0")

import spacy  # noqa: E402
import srsly  # noqa: E402
from PIL import Image  # noqa: E402

import spacy_ita  # noqa: E402,F401
from spacy_ita.bulk import apply  # noqa: E402
from demo_corpus import KINDS, SAVED_SIZE, render_image  # noqa: E402  (project/scripts)
from spacy_ita.corpus.mner import read_mner  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WHERE_CODE = str(Path(__file__).resolve().parent / "where_probe.py")
DATA = REPO.parent / "shared" / "data" / "twitter2015"
LABELS = ["LOC", "ORG", "OTHER", "PER"]
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera"]
RUNS = {
    "local": {"engine": "local"},
    "n_process_2": {"engine": "local", "n_process": 2},
    "ray_1_worker": {"engine": "ray", "workers": 1},
    "ray_2_workers": {"engine": "ray", "workers": 2},
}
TARGET_POSTS = 10_000_000


def twitter_posts(limit: int) -> List[Dict[str, Any]]:
    posts = []
    for split in ("train", "valid", "test"):
        path = DATA / f"{split}.txt"
        if not path.exists():
            sys.exit(f"Data not found: {path} (see ../shared/data/README.md)")
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


def build_model(folder: Path) -> str:
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_ner")
    nlp.get_pipe("ita_ner").initialize(lambda: [], nlp=nlp, labels=LABELS)
    nlp.to_disk(folder / "model")
    return str(folder / "model")


def with_where_probe(model: str, folder: Path) -> str:
    """`model` plus bench_where (logging to folder/where.log) at its end."""
    spacy.util.import_file("bench_where_probe", WHERE_CODE)
    nlp = spacy.load(model)
    nlp.add_pipe("bench_where", config={"log_path": str(folder / "where.log")})
    nlp.to_disk(folder / "model-where")
    return str(folder / "model-where")


def posts_per_worker(log: Path) -> Dict[str, int]:
    """Posts per "node/process" from the where log of one run, which it removes."""
    if not log.exists():
        return {}
    counts = Counter("/".join((node[:8], pid)) for node, pid in
                     (line.split() for line in log.read_text().splitlines()))
    log.unlink()
    return dict(counts)


def projection(rate_per_worker: float) -> Dict[str, Any]:
    """Hours for TARGET_POSTS at a per-worker rate, and workers for a deadline."""
    hours = {workers: TARGET_POSTS / (rate_per_worker * workers) / 3600
             for workers in (1, 10, 50, 100, 500)}
    workers_for = {deadline: int(-(-TARGET_POSTS // (rate_per_worker * deadline * 3600)))
                   for deadline in (24, 8, 1)}
    return {"hours_by_workers": hours, "workers_by_deadline_hours": workers_for}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--model", help="A trained pipeline (default: a fresh ita_ner).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output", type=Path, help="Write the results as JSON here.")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_apply_"))
    try:
        posts = twitter_posts(args.posts)
        source = write_input(posts, folder)
        model = with_where_probe(args.model or build_model(folder), folder)
        results: Dict[str, Any] = {}
        reference = None
        for name in args.runs:
            load_before = os.getloadavg()[0]
            out = folder / f"{name}.jsonl"
            start = time.perf_counter()
            summary = apply(model, source, out, batch_size=args.batch_size, progress=False,
                            code=WHERE_CODE, **RUNS[name])
            seconds = time.perf_counter() - start
            rows = sorted(srsly.read_jsonl(out), key=lambda row: row["input_row"])
            reference = reference if reference is not None else rows
            workers = RUNS[name].get("n_process", RUNS[name].get("workers", 1))
            results[name] = {
                "posts": summary.n_written, "seconds": seconds,
                "posts_per_second": summary.n_written / seconds,
                "posts_per_second_per_worker": summary.n_written / seconds / workers,
                "errors": summary.n_errors, "image_errors": summary.n_image_errors,
                "same_rows_as_first_run": rows == reference,
                "posts_per_worker": posts_per_worker(folder / "where.log"),
                "load_before": load_before, "load_after": os.getloadavg()[0]}
            print(f"{name}: {results[name]['posts_per_second']:.2f} posts/s", file=sys.stderr)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{len(posts)} Twitter-2015 posts with rendered images; {platform.machine()}, "
          f"{os.cpu_count()} CPUs; batch size {args.batch_size}\n")
    print("| run | posts/s | per worker | seconds | same rows | load before / after "
          "| posts by node/process |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['posts_per_second']:.2f} | {r['posts_per_second_per_worker']:.2f} "
              f"| {r['seconds']:.0f} | {'yes' if r['same_rows_as_first_run'] else 'NO'} "
              f"| {r['load_before']:.1f} / {r['load_after']:.1f} "
              f"| {', '.join(f'{w}: {n}' for w, n in r['posts_per_worker'].items())} |")
    best = max(r["posts_per_second_per_worker"] for r in results.values())
    plan = projection(best)
    print(f"\n10 million posts at {best:.2f} posts/s per worker (the best measured): "
          + ", ".join(f"{w} workers {h:,.0f} h" for w, h in plan["hours_by_workers"].items())
          + "; workers for a deadline: "
          + ", ".join(f"{d} h: {w:,}" for d, w in plan["workers_by_deadline_hours"].items()))
    if args.output:
        args.output.write_text(json.dumps({"posts": len(posts), "runs": results,
                                           "projection": plan}, indent=2) + "\n")


if __name__ == "__main__":
    main()
