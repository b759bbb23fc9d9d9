"""Accuracy of ITA against the baselines on Twitter-2015, side by side.

Systems (same encoder, epochs and learning-rate schedule for all):
  a  spaCy's stock transformer `ner` (project/configs/stock_ner.cfg)
  b  ita_ner text-only baseline (no context)
  c  ITA without CVA, cross-modal view
  d  ITA with CVA, cross-modal view
  e  ITA with CVA, text-only view (the same model as d)
Each is trained on `train`, selected on `valid` and scored on `test` with
BLIP-2 captions as visual context, for each seed.

    python bench/bench_accuracy.py --quick                  # a smoke run: few steps, 1 seed
    python bench/bench_accuracy.py --seeds 0 1 2 --epochs 1  # the full comparison
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "twitter2015"
CONFIGS = REPO / "project" / "configs"
PUBLISHED = {
    "text-only BERT-base-CRF": 71.81,
    "UMT": 73.41,
    "text-only XLM-R-large-CRF": 77.04,
    "ITA (XLM-R-large)": 78.03,
}
ITA_VARIANTS = {
    "b": ["--components.ita_ner.use_context", "false"],
    "c": ["--components.ita_ner.loss.text_weight", "0", "--components.ita_ner.loss.cross_weight", "1",
          "--components.ita_ner.loss.cva_weight", "0"],
    "d": [],
}
SYSTEMS = {
    "a": "stock spaCy NER (transformer + ner)",
    "b": "ita_ner text-only baseline",
    "c": "ITA without CVA, cross view",
    "d": "ITA with CVA, cross view",
    "e": "ITA with CVA, text view",
}


def run(cmd, log):
    log.write(f"$ {' '.join(map(str, cmd))}\n")
    log.flush()
    subprocess.run([str(c) for c in cmd], check=True, stdout=log, stderr=subprocess.STDOUT)


def convert(workdir: Path, log):
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        target = corpus / f"{split}.spacy"
        if not target.exists():
            run([sys.executable, "-m", "spacy_ita", "convert", DATA / f"{split}.txt", target,
                 "--captions", DATA / "blip2_captions.txt"], log)
    return corpus


def train(system, seed, corpus, output, schedule, log):
    config = CONFIGS / ("stock_ner.cfg" if system == "a" else "ita.cfg")
    run([sys.executable, "-m", "spacy", "train", config, "--output", output,
         "--paths.train", corpus / "train.spacy", "--paths.dev", corpus / "valid.spacy",
         "--system.seed", seed, *schedule, *ITA_VARIANTS.get(system, [])], log)


def score(system, model, corpus, output, log):
    """Test-set scores: spacy_ita evaluate for ita_ner views, spacy evaluate for the stock NER."""
    if system == "a":
        run([sys.executable, "-m", "spacy", "evaluate", model, corpus / "test.spacy", "--output", output], log)
        metrics = json.loads(output.read_text())
        return {"a": metrics}
    run([sys.executable, "-m", "spacy_ita", "evaluate", model, corpus / "test.spacy",
         "--views", "cross,text", "--output", output], log)
    views = json.loads(output.read_text())["views"]
    if system == "d":
        return {"d": views["cross"], "e": views["text"]}
    return {system: views["text" if system == "b" else "cross"]}


def summarise(results):
    table = {}
    for system in SYSTEMS:
        runs = [r[system] for r in results if system in r]
        if not runs:
            continue
        f1 = [100 * r["ents_f"] for r in runs]
        labels = sorted({label for r in runs for label in (r.get("ents_per_type") or {})})
        table[system] = {
            "name": SYSTEMS[system],
            "seeds": len(runs),
            "f1_mean": statistics.mean(f1),
            "f1_std": statistics.stdev(f1) if len(f1) > 1 else 0.0,
            "p_mean": statistics.mean(100 * r["ents_p"] for r in runs),
            "r_mean": statistics.mean(100 * r["ents_r"] for r in runs),
            "per_type_f1": {
                label: statistics.mean(100 * r["ents_per_type"][label]["f"] for r in runs)
                for label in labels
            },
        }
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: --max-steps 30, seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=0, help="cap on updates (0: epochs decide)")
    parser.add_argument("--systems", default="abcd", help="which of a, b, c, d to train (e comes with d)")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "accuracy.json")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.max_steps = [0], args.max_steps or 30
    if not DATA.exists():
        sys.exit(f"Data not found: {DATA} (see ../shared/data/README.md)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = 4000 // 16
    total = args.max_steps or args.epochs * steps_per_epoch
    schedule = ["--training.max_epochs", args.epochs, "--training.max_steps", args.max_steps,
                "--training.optimizer.learn_rate.total_steps", total,
                "--training.optimizer.learn_rate.warmup_steps", max(1, total // 10),
                "--training.eval_frequency", max(10, total // 4)]
    with open(args.workdir / "log.txt", "a") as log:
        corpus = convert(args.workdir, log)
        results = []
        for seed in args.seeds:
            seed_results = {}
            for system in args.systems:
                output = args.workdir / f"{system}-seed{seed}"
                start = time.time()
                if not (output / "model-best").exists():
                    train(system, seed, corpus, output, schedule, log)
                seed_results.update(score(system, output / "model-best", corpus, output / "test.json", log))
                seed_results[f"{system}_seconds"] = time.time() - start
            results.append(seed_results)
    summary = {
        "settings": {"seeds": args.seeds, "epochs": args.epochs, "max_steps": args.max_steps},
        "systems": summarise(results),
        "runs": results,
        "published": PUBLISHED,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    for system, row in summary["systems"].items():
        print(f"({system}) {row['name']:<40} F1 {row['f1_mean']:.2f} ± {row['f1_std']:.2f}")


if __name__ == "__main__":
    main()
