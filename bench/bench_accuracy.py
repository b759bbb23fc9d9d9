"""Accuracy of ITA against the baselines on Twitter-2015, side by side.

Systems (same encoder, epochs and learning-rate schedule for all):
  a  spaCy's stock transformer `ner` (project/configs/stock_ner.cfg)
  b  ita_ner text-only baseline (no context)
  c  ITA without CVA, cross-modal view
  d  ITA with CVA, cross-modal view
  e  ITA with CVA, text-only view (the same model as d)
  f  ITA with CVA, cross-modal view, each test post given another post's context
Each is trained on `train`, selected on `valid` and scored on `test` for each
seed, with the visual context of `--context` (as the project's `context` var):
PGIM's knowledge (default), BLIP-2 captions, or both; the training knowledge
augmented or as released (`--train-knowledge`, as the project's
`train_knowledge` var).

    python bench/bench_accuracy.py --quick                  # a smoke run: few steps, 1 seed
    python bench/bench_accuracy.py --seeds 0 1 2 --systems bd --output bench/results/accuracy_knowledge.json

The schedule is the project's CPU default (project/project.yml vars): 500
updates of 16 posts (two epochs of Twitter-2015), learning rate 2e-4 with 50
warm-up steps, linear decay, dev scored every 100 updates, best on dev kept.
`--project project` takes seed 0's b, c and d from the models and test metrics
of `spacy project run ablation . --vars.dataset twitter2015` (same schedule,
same seed) instead of training and scoring them again.
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
VARIANT_CONFIG = REPO / "project" / "scripts" / "variant_config.py"
TWITTER_CORPUS = REPO / "project" / "scripts" / "twitter_corpus.py"
AUGMENT_KNOWLEDGE = REPO / "project" / "scripts" / "augment_knowledge.py"
PUBLISHED = {
    "text-only BERT-base-CRF": 71.81,
    "UMT": 73.41,
    "text-only XLM-R-large-CRF": 77.04,
    "ITA (XLM-R-large)": 78.03,
}
# Which variant of project/scripts/variant_config.py each ita_ner system trains.
ITA_VARIANTS = {"b": "text_only", "c": "ita", "d": "ita_cva"}
SYSTEMS = {
    "a": "stock spaCy NER (transformer + ner)",
    "b": "ita_ner text-only baseline",
    "c": "ITA without CVA, cross view",
    "d": "ITA with CVA, cross view",
    "e": "ITA with CVA, text view",
    "f": "ITA with CVA, cross view, shuffled contexts",
}


def run(cmd, log):
    log.write(f"$ {' '.join(map(str, cmd))}\n")
    log.flush()
    subprocess.run([str(c) for c in cmd], check=True, stdout=log, stderr=subprocess.STDOUT)


def convert(workdir: Path, context: str, train_knowledge: str, log):
    """train/dev/test.spacy with the chosen context and training knowledge, as
    the project builds them."""
    released = workdir / f"corpus-{context}"
    if not (released / "test.spacy").exists():
        run([sys.executable, TWITTER_CORPUS, DATA, released, "--context", context], log)
    if train_knowledge == "released":
        return released
    corpus = workdir / f"corpus-{context}-{train_knowledge}"
    if not (corpus / "test.spacy").exists():
        run([sys.executable, AUGMENT_KNOWLEDGE, released, corpus, "--knowledge", train_knowledge], log)
    return corpus


def train(system, seed, corpus, output, schedule, extra, encoder, log):
    if system == "a":
        config = CONFIGS / "stock_ner.cfg"
    else:
        config = output.parent / f"{system}.cfg"
        run([sys.executable, VARIANT_CONFIG, CONFIGS / "ita.cfg", config,
             "--variant", ITA_VARIANTS[system], "--encoder", encoder], log)
    run([sys.executable, "-m", "spacy", "train", config, "--output", output,
         "--paths.train", corpus / "train.spacy", "--paths.dev", corpus / "dev.spacy",
         "--system.seed", seed, *schedule, *([] if system == "a" else extra)], log)


def dev_f1(model: Path) -> float:
    """The dev (valid) entity F1 that made this checkpoint the best, from its meta.json."""
    return 100 * json.loads((model / "meta.json").read_text())["performance"]["ents_f"]


def score(system, model, corpus, output, log):
    """Test-set scores: spacy_ita evaluate for ita_ner views, spacy evaluate for
    the stock NER; an existing metrics file is read, not recomputed."""
    if output.exists():
        metrics = json.loads(output.read_text())
        return {"a": metrics} if system == "a" else _views(system, metrics)
    if system == "a":
        run([sys.executable, "-m", "spacy", "evaluate", model, corpus / "test.spacy", "--output", output], log)
        metrics = json.loads(output.read_text())
        return {"a": metrics}
    run([sys.executable, "-m", "spacy_ita", "evaluate", model, corpus / "test.spacy",
         "--views", "cross,text", *(["--shuffled-contexts"] if system == "d" else []),
         "--output", output], log)
    return _views(system, json.loads(output.read_text()))


def _views(system, metrics):
    views = metrics["views"]
    if system == "d":
        shuffled = metrics.get("shuffled_contexts", {})  # not in the project's metrics
        return {"d": views["cross"], "e": views["text"], **({"f": shuffled["cross"]} if shuffled else {})}
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
            # Share of test posts read with context, per ita_ner.views (older metrics lack it).
            "cross_docs_share": statistics.mean(r["n_cross_docs"] / r["n_docs"] for r in runs)
            if all("n_cross_docs" in r for r in runs) else None,
            "dev_f1_mean": statistics.mean(r[f"{'d' if system in 'ef' else system}_dev_f1"]
                                           for r in results if system in r),
            "per_type_f1": {
                label: statistics.mean(100 * r["ents_per_type"][label]["f"] for r in runs)
                for label in labels
            },
        }
    return table


def markdown_table(systems) -> str:
    """The accuracy table of docs/benchmarks.md: mean ± std over seeds, per-type means."""
    labels = sorted({label for row in systems.values() for label in row["per_type_f1"]})
    lines = ["| system | seeds | P | R | F1 (mean ± std) | dev F1 | " + " | ".join(labels) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(labels)]
    for key, row in systems.items():
        per_type = " | ".join(f"{row['per_type_f1'].get(label, float('nan')):.1f}" for label in labels)
        lines.append(f"| ({key}) {row['name']} | {row['seeds']} | {row['p_mean']:.2f} | {row['r_mean']:.2f} "
                     f"| **{row['f1_mean']:.2f} ± {row['f1_std']:.2f}** | {row['dev_f1_mean']:.2f} | {per_type} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: --max-steps 30, seed 0")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--context", default="knowledge", choices=["captions", "knowledge", "all"])
    parser.add_argument("--train-knowledge", default="augmented", choices=["augmented", "released"])
    parser.add_argument("--encoder", default="bundled",
                        help="the encoder of b to f, as the project's `encoder` var (a keeps "
                             "stock_ner.cfg's MiniLM) "
                             "(bundled: all-MiniLM-L6-v2; mpnet: all-mpnet-base-v2)")
    parser.add_argument("--max-steps", type=int, default=500, help="updates of 16 posts")
    parser.add_argument("--learn-rate", type=float, default=2e-4)
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--eval-frequency", type=int, default=100)
    parser.add_argument("--systems", default="abcd", help="which of a, b, c, d to train (e and f come with d)")
    parser.add_argument("--extra", default="",
                        help="more config overrides for the ita_ner systems, e.g. "
                             "'--components.ita_ner.head_lr_scale 100'")
    parser.add_argument("--no-train", action="store_true",
                        help="only collect runs already trained and scored in --workdir (a summary)")
    parser.add_argument("--project", type=Path,
                        help="the project folder: reuse its twitter2015 ablation for seed 0")
    parser.add_argument("--corpus", type=Path,
                        help="a folder with train/dev/test.spacy to use instead of converting the data")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "accuracy.json")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.max_steps, args.eval_frequency = [0], 30, 10
    if not DATA.exists():
        sys.exit(f"Data not found: {DATA} (see ../shared/data/README.md)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    schedule = ["--training.max_epochs", 100, "--training.max_steps", args.max_steps,
                "--training.optimizer.learn_rate.total_steps", args.max_steps,
                "--training.optimizer.learn_rate.warmup_steps", args.warmup_steps,
                "--training.optimizer.learn_rate.initial_rate", args.learn_rate,
                "--training.eval_frequency", args.eval_frequency]
    extra = args.extra.split()
    with open(args.workdir / "log.txt", "a") as log:
        corpus = args.corpus or convert(args.workdir, args.context, args.train_knowledge, log)
        results = []
        for seed in args.seeds:
            seed_results = {}
            for system in args.systems:
                output = args.workdir / f"{system}-seed{seed}"
                start = time.time()
                model, metrics = output / "model-best", output / "test.json"
                if args.project is not None and seed == 0 and system in ITA_VARIANTS:
                    model = args.project / "training" / "twitter2015" / ITA_VARIANTS[system] / "model-best"
                    metrics = args.project / "metrics" / "twitter2015" / f"{ITA_VARIANTS[system]}.json"
                elif args.no_train:
                    if not metrics.exists():  # untrained, or still training: never score a checkpoint mid-run
                        continue
                elif not model.exists():
                    train(system, seed, corpus, output, schedule, extra, args.encoder, log)
                seed_results.update(score(system, model, corpus, metrics, log))
                seed_results[f"{system}_dev_f1"] = dev_f1(model)
                seed_results[f"{system}_seconds"] = time.time() - start
            results.append(seed_results)
    summary = {
        "settings": {"seeds": args.seeds, "context": args.context,
                     "train_knowledge": "" if args.corpus else args.train_knowledge,
                     "encoder": args.encoder,
                     "max_steps": args.max_steps, "learn_rate": args.learn_rate,
                     "warmup_steps": args.warmup_steps, "eval_frequency": args.eval_frequency,
                     "extra": args.extra, "project": str(args.project or ""),
                     "corpus": str(args.corpus or "")},
        "systems": summarise(results),
        "runs": results,
        "published": PUBLISHED,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2))
    print(markdown_table(summary["systems"]))


if __name__ == "__main__":
    main()
