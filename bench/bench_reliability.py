"""Reliability bench for spacy-ita (issue 6): the big variants of the hostile-input tests.

    python bench/bench_reliability.py --quick            # ~3-5 minutes on 2 CPU cores
    python bench/bench_reliability.py --full             # 5,000 posts, more kills
    python bench/bench_reliability.py --only batches --posts 1000 --json out.json

Sections (--only to pick some):
  text      hostile post texts and 5k/20k(/50k) token posts through a trained
            tiny-encoder ita_ner: text kept, every token tagged, seconds
  batches   N mixed posts (a fifth with broken images) through ita_context +
            ita_ner: single-doc calls vs nlp.pipe with batch sizes 1, 8, 64
            in process and with n_process=2 (with torch at one thread, the
            workaround), plus the n_process=2 deadlock check (watchdog)
  images    every bad/good image case under each on_error policy; a real
            20,000 x 20,000 PNG and a 7,000 x 7,000 PNG with peak RSS
  crash     `spacy_ita extract` killed with SIGKILL at random moments, then
            resumed (cache integrity, images computed twice); `python -m
            spacy_ita train` killed again and again, each rerun with --resume
            (checkpoints absent/loadable/broken), then resumed to the end and
            compared with an uninterrupted run (largest weight difference)

Everything is offline (HF_HUB_OFFLINE=1); the encoder is the tests' random
2-layer BERT with 64 positions, so speed numbers are about mechanics, not
about a real encoder. Results print as a table and, with --json, as JSON.
"""
import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "ner"), str(TESTS / "context"), str(TESTS / "training")]

MODES = {
    "quick": {"posts": 200, "long_posts": [5_000, 20_000], "extract_kills": 1,
              "extract_images": 24, "train_kills": 3, "big_png": True},
    "full": {"posts": 5_000, "long_posts": [5_000, 20_000, 50_000], "extract_kills": 3,
             "extract_images": 60, "train_kills": 8, "big_png": True},
}
SECTIONS = ("text", "batches", "images", "crash")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- text ---------------------------------------------------------------------

def bench_text(encoder: str, settings) -> dict:
    import numpy

    from helpers import check_tagged, trained_pipeline
    from spacy_ita.ner.inputs import TaggerInput
    from test_hostile_texts import LONG_CONTEXT, TEXTS

    nlp = trained_pipeline(encoder)
    labels = nlp.get_pipe("ita_ner").labels
    failures = []
    n_cases = 0
    for name, text in TEXTS.items():
        for context in (None, {"captions": ["a game"]}, LONG_CONTEXT):
            n_cases += 1
            try:
                doc = nlp.make_doc(text)
                doc._.visual_context = context
                check_tagged(nlp(doc), text, labels)
            except Exception as err:  # noqa: BLE001
                failures.append(f"{name}: {type(err).__name__}: {err}"[:200])
    long_posts = []
    bias = nlp.get_pipe("ita_ner").model.module.emission.bias.detach().numpy()
    words = ["Kobe", "visits", "Boston", "tonight", "with", "Federer", "!", "😀", "#nba",
             "https://t.co/x"]
    for n in settings["long_posts"]:
        text = " ".join(words[i % len(words)] for i in range(n))
        doc = nlp.make_doc(text)
        doc._.visual_context = LONG_CONTEXT
        start = time.perf_counter()
        tagged = nlp(doc)
        seconds = time.perf_counter() - start
        (scores,) = nlp.get_pipe("ita_ner").model.predict([TaggerInput(tagged)])
        unscored = int((numpy.abs(numpy.asarray(scores) - bias).max(axis=1) < 1e-6).sum())
        untagged = sum(t.ent_iob_ not in ("B", "I", "O") for t in tagged)
        long_posts.append({"tokens": len(doc), "seconds": round(seconds, 2),
                           "tokens_per_second": round(len(doc) / seconds),
                           "untagged_tokens": untagged, "tokens_without_encoder_vector": unscored,
                           "text_unchanged": tagged.text == text})
        log(f"text: {len(doc)} tokens in {seconds:.1f}s")
    return {"hostile_cases": n_cases, "failures": failures, "long_posts": long_posts}


# --- batches ------------------------------------------------------------------

def bench_batches(encoder: str, settings, work: Path) -> dict:
    from mixed_batches import doc_summary, docs_from_posts, multimodal_pipeline, post_dicts

    n = settings["posts"]
    nlp = multimodal_pipeline(encoder, work)
    posts = post_dicts(n, work / "images")
    (work / "posts.json").write_text(json.dumps(posts), encoding="utf8")
    warnings.simplefilter("ignore")
    start = time.perf_counter()
    single = [doc_summary(nlp(doc)) for doc in docs_from_posts(nlp, posts)]
    result = {"posts": n, "broken_images": sum(1 for s in single if s["image_error"]),
              "entities": sum(len(s["ents"]) for s in single),
              "single_doc_seconds": round(time.perf_counter() - start, 1), "runs": []}
    log(f"batches: {n} single-doc calls in {result['single_doc_seconds']}s")

    def compare(label, docs, seconds):
        texts_in_order = [d["text"] for d in docs] == [p["text"] for p in posts]
        mismatched = sum(1 for a, b in zip(docs, single) if a != b)
        row = {"run": label, "returned": len(docs), "lost": n - len(docs),
               "in_order": texts_in_order, "differs_from_single": mismatched,
               "all_tokens_tagged": all(d["iob_ok"] for d in docs),
               "seconds": round(seconds, 1)}
        result["runs"].append(row)
        log(f"batches: {label}: {row}")

    for batch_size in (1, 8, 64):
        start = time.perf_counter()
        docs = [doc_summary(doc) for doc in
                nlp.pipe(docs_from_posts(nlp, posts), batch_size=batch_size)]
        compare(f"pipe batch_size={batch_size}", docs, time.perf_counter() - start)

    worker = TESTS / "ner" / "npipe_worker.py"

    def run_worker(*options, timeout):
        out = work / "npipe.json"
        if out.exists():
            out.unlink()
        command = [sys.executable, str(worker), str(work / "multimodal"),
                   str(work / "posts.json"), str(out), *options]
        process = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        data = json.loads(out.read_text()) if out.exists() else None
        return process, data

    process, data = run_worker("--batch-sizes", "1,8,64", "--n-process", "2", "--one-thread",
                               "--watchdog", str(max(300, n // 4)), timeout=3 * max(600, n))
    if data and "runs" in data:
        for batch_size, run in data["runs"].items():
            compare(f"pipe n_process=2 batch_size={batch_size} (torch 1 thread)",
                    run["docs"], run["seconds"])
    else:
        result["runs"].append({"run": "pipe n_process=2 (torch 1 thread)",
                               "error": (data or process.stderr[-500:])})
    deadlock = {}
    for label, options in (("fresh load", []), ("after the parent tagged docs", ["--warm-up"])):
        process, data = run_worker("--batch-sizes", "8", "--n-process", "2", "--limit", "24",
                                   "--watchdog", "30", *options, timeout=300)
        deadlock[label] = ("hung (killed by the 30 s watchdog)" if process.returncode == 3
                           else "completed" if process.returncode == 0
                           else f"exit {process.returncode}: {process.stderr[-300:]}")
        log(f"batches: n_process=2 without workaround, {label}: {deadlock[label]}")
    result["n_process_2_default_threads"] = deadlock
    return result


# --- images -------------------------------------------------------------------

# VmHWM, not getrusage: ru_maxrss survives exec, so a child would report our peak.
RSS_SCRIPT = """
import json, sys, time
from spacy_ita.context.images import ImageError, load_image
def peak_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
base = peak_kb()
start = time.perf_counter()
try:
    image = load_image(sys.argv[1], max_pixels=int(sys.argv[2]))
    out = {"size": list(image.size)}
except ImageError as err:
    out = {"error": str(err)[:160]}
out["seconds"] = round(time.perf_counter() - start, 2)
out["peak_rss_mb"] = round(peak_kb() / 1024)
out["rss_before_load_mb"] = round(base / 1024)
print(json.dumps(out))
"""


def bench_images(settings, work: Path) -> dict:
    import re

    from hostile_images import (STRIP_CASES, bad_image_cases, good_image_cases, strip_image,
                                write_big_png)
    from mixed_batches import EXTRACTOR_CALLS, context_nlp
    from spacy_ita import VisualContext
    from spacy_ita.context import make_doc
    from spacy_ita.context.images import ImageError

    warnings.simplefilter("ignore")
    bad = bad_image_cases(work / "bad")
    good = good_image_cases()
    rows = {"bad_cases": len(bad), "good_cases": len(good), "policy_checks": 0,
            "policy_failures": [], "bad_images_seen_by_extractor": 0}
    for policy in ("warn", "raise", "ignore"):
        nlp = context_nlp(on_error=policy)
        seen_before = EXTRACTOR_CALLS["images"]
        for name, (value, pattern) in bad.items():
            rows["policy_checks"] += 1
            doc = make_doc(nlp, "post", value)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    nlp(doc)
                ours = [w for w in caught if "ita_context" in str(w.message)]
                ok = (policy != "raise" and doc._.visual_context == VisualContext()
                      and re.search(pattern, doc._.image_error or "")
                      and len(ours) == (1 if policy == "warn" else 0))
            except ImageError as err:
                ok = policy == "raise" and re.search(pattern, str(err))
            if not ok:
                rows["policy_failures"].append(f"{policy}/{name}")
        rows["bad_images_seen_by_extractor"] += EXTRACTOR_CALLS["images"] - seen_before
        usable = [(name, lambda build=build: build(work)) for name, (build, _) in good.items()]
        usable += [(name, lambda size=size: strip_image(size))
                   for name, (size, _) in STRIP_CASES.items()]
        for name, build in usable:
            rows["policy_checks"] += 1
            try:
                doc = nlp(make_doc(nlp, "post", build()))
                problem = (doc._.image_error if doc._.image_error is not None
                           else None if len(doc._.visual_context.object_tags) == 2
                           else "no context")
            except Exception as err:  # noqa: BLE001
                problem = f"raised {type(err).__name__}: {err}"
            if problem is not None:
                rows["policy_failures"].append(f"{policy}/{name}: {problem[:120]}")
    log(f"images: {rows['policy_checks']} checks, failures: {rows['policy_failures']}")
    big = []
    if settings["big_png"]:
        cases = [("20000x20000 PNG, default max_pixels", 20_000, 50_000_000),
                 ("20000x20000 PNG, max_pixels=10**12", 20_000, 10**12),
                 ("7000x7000 PNG (49M px, allowed)", 7_000, 50_000_000)]
        for label, side, max_pixels in cases:
            path = work / f"big_{side}.png"
            if not path.exists():
                start = time.perf_counter()
                size = write_big_png(path, side, side)
                log(f"images: wrote {path.name} ({size / 1e6:.1f} MB) in "
                    f"{time.perf_counter() - start:.1f}s")
            out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(path), str(max_pixels)],
                                 capture_output=True, text=True, timeout=600)
            entry = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 \
                else {"crash": out.stderr[-300:]}
            entry.update({"case": label, "file_mb": round(path.stat().st_size / 1e6, 2)})
            big.append(entry)
            log(f"images: {entry}")
    rows["big_images"] = big
    return rows


# --- crash --------------------------------------------------------------------

def bench_crash(encoder: str, settings, work: Path) -> dict:
    import srsly
    from helpers import largest_difference, training_setup
    from kill_and_resume import (cache_state, checkpoint_status, kill_extraction_when, kill_training,
                                 make_images, prepare_cache, resume_training, run_extraction)

    rng = random.Random(6)
    n_images = settings["extract_images"]
    extraction = []
    for attempt in range(settings["extract_kills"]):
        folder = work / f"extract_{attempt}"
        make_images(folder / "images", n_images)
        cache = folder / "contexts.sqlite"
        prepare_cache(cache)
        output = folder / "contexts.spacy"
        kills = []
        # Kill at a random point, again on the resumed run, then let it finish.
        for _ in range(2):
            rows_now = cache_state(cache)["rows"]
            target = min(n_images - 1, rows_now + rng.randint(1, max(1, n_images // 3)))
            kill = kill_extraction_when(folder / "images", output, cache, target,
                                        extra_delay=rng.uniform(0, 0.3))
            state = cache_state(cache)
            kills.append({"killed": kill["killed"], "rows_after_kill": state["rows"],
                          "integrity": state["integrity"]})
        finish = run_extraction(folder / "images", output, cache)
        final = cache_state(cache)
        entry = {"images": n_images, "kills": kills, "final_returncode": finish.returncode,
                 "final_rows": final["rows"], "integrity": final["integrity"],
                 "computed": final["logged"], "computed_twice": final["repeated"],
                 "wrote_all_docs": f"Wrote {n_images} docs" in finish.stdout}
        extraction.append(entry)
        log(f"crash: extraction {entry}")
    training = []
    setup = training_setup(work / "train", encoder)
    steps, every = 1500, 10
    modes = ["between", "saving"] + ["after"] * (settings["train_kills"] - 2)
    for attempt, when in enumerate(modes):
        delay = rng.uniform(0, 3) if when == "after" else 0.0
        kill = kill_training(setup, when=when, delay=delay, eval_frequency=every,
                             max_steps=steps, resume=attempt > 0)
        status = {d: checkpoint_status(setup["output"], d) for d in ("model-last", "model-best")}
        exists = {d: (setup["output"] / d).exists() for d in ("model-last", "model-best")}
        link = srsly.read_json(setup["output"] / "model-last" / "meta.json").get(
            "spacy_ita", {}).get("checkpoint", {}) if exists["model-last"] else {}
        entry = {"kill": when, "delay_s": round(delay, 2), "killed": kill["killed"],
                 "being_written": kill.get("being_written"),
                 "checkpoint_step": link.get("step"),
                 **{f"{d}": ("absent" if not exists[d] else "loads" if status[d] is None
                             else f"BROKEN: {status[d]}") for d in status}}
        training.append(entry)
        log(f"crash: training {entry}")
    finish = resume_training(setup, eval_frequency=every, max_steps=steps)
    reference = training_setup(work / "train-uninterrupted", encoder)
    uninterrupted = resume_training(reference, eval_frequency=every, max_steps=steps)
    difference = {d: largest_difference(setup["output"] / d, reference["output"] / d)
                  for d in ("model-last", "model-best")}
    entry = {"final_resume": "ok" if finish.returncode == 0 else finish.stderr[-500:],
             "uninterrupted": "ok" if uninterrupted.returncode == 0
             else uninterrupted.stderr[-500:],
             "largest_weight_difference_to_uninterrupted": difference}
    training.append(entry)
    log(f"crash: training {entry}")
    return {"extraction": extraction, "training": training}


# --- main -----------------------------------------------------------------------

def print_summary(results: dict) -> None:
    print("\n=== summary ===")
    print(json.dumps(results, indent=1, ensure_ascii=False)[:20000])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes (default)")
    mode.add_argument("--full", action="store_true", help="5,000 posts, more kills")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--posts", type=int, help="override the number of posts")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in this process (default 1, like the n_process "
                        "workers; 0 keeps torch's default, slow on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    settings = dict(MODES["full" if args.full else "quick"])
    if args.posts:
        settings["posts"] = args.posts
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_reliability_"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"mode": "full" if args.full else "quick", "settings": settings,
               "torch_threads": args.threads or "default", "cpus": os.cpu_count(),
               "load_average_at_start": [round(x, 1) for x in os.getloadavg()]}
    try:
        encoder = None
        if {"text", "batches", "crash"} & set(sections):
            from helpers import make_tiny_encoder

            encoder = make_tiny_encoder(work / "tiny_encoder")
        for section in sections:
            section_start = time.perf_counter()
            log(f"--- {section}")
            (work / section).mkdir(parents=True, exist_ok=True)
            if section == "text":
                results[section] = bench_text(encoder, settings)
            elif section == "batches":
                results[section] = bench_batches(encoder, settings, work / "batches")
            elif section == "images":
                results[section] = bench_images(settings, work / "images")
            else:
                results[section] = bench_crash(encoder, settings, work / "crash")
            results[section]["section_seconds"] = round(time.perf_counter() - section_start, 1)
    finally:
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        results["bench_peak_rss_mb"] = round(peak_rss_mb())
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
