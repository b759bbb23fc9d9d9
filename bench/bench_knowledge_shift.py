"""How much of the cross view's gain over text-only survives knowledge that does
not look like the training knowledge (Twitter-2015 test, nothing retrained).

A user's LM at inference is not the ChatGPT that wrote PGIM's training
knowledge. Each condition rewrites the test posts' knowledge, then scores the
(d) models' cross view with `spacy_ita evaluate`'s own `evaluate_views`:

  as trained                    PGIM's answers unchanged
  types renamed                 the same mentions, their free-form types
                                ("person/handle", "sports team") mapped to
                                PER/LOC/ORG/OTHER and written as the project's LM
                                extractor writes them (`X (PER) ; Y (LOC)`)
  renamed, 30 % dropped         and 30 % of the mentions found in the post dropped
  renamed, 30 % spurious added  and spurious mentions, as many as 30 % of those
                                mentions: spans of the post that touch no gold
                                entity, typed at random from the label set
  renamed, dropped and spurious both

How the mentions are dropped and added: spacy_ita/knowledge/shift.py.
The rewriting is seeded (`--seed`, 0), so every model reads the
same rewritten posts. Gains are over the text-only baseline (b), averaged over
the given seeds; `share` is a condition's gain over the `as trained` gain.

    OMP_NUM_THREADS=1 python bench/bench_knowledge_shift.py \
        --models WORK/d-seed0/model-best --baseline WORK/b-seed0/model-best \
        --test WORK/corpus-knowledge/test.spacy --output bench/results/knowledge_shift.json

`--baseline-f1 72.91` gives (b)'s test F1 instead of a model to score.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import spacy

from spacy_ita.cli.evaluate import evaluate_views
from spacy_ita.corpus.readers import MultimodalCorpus
from spacy_ita.files import replace_json
from spacy_ita.knowledge.shift import CONDITIONS, rewrite_knowledge


def score_model(model: Path, test: Path, seed: int, log) -> Dict:
    """Test F1 (in %) of one (d) model's text view and its cross view under each
    condition, with the rewriting counts."""
    nlp = spacy.load(model)
    examples = list(MultimodalCorpus(test)(nlp))
    result = {"model": str(model), "precision": nlp.get_pipe("ita_ner").precision_in_effect,
              "text": 100 * evaluate_views(nlp, examples, ["text"])["text"]["ents_f"],
              "conditions": {}}
    log(f"{model}: text view {result['text']:.2f}")
    for name, shift in CONDITIONS.items():
        shifted, counts = (examples, {}) if shift is None else rewrite_knowledge(examples, *shift, seed)
        scores = evaluate_views(nlp, shifted, ["cross"])["cross"]
        result["conditions"][name] = {"cross": 100 * scores["ents_f"],
                                      "n_cross_docs": scores["n_cross_docs"], **counts}
        log(f"{model}: {name}: cross {100 * scores['ents_f']:.2f} {counts}")
    return result


def baseline_scores(args, log) -> List[float]:
    """(b)'s test F1 (in %) per seed: given, or scored from its models (text view)."""
    if args.baseline_f1:
        return list(args.baseline_f1)
    scores = []
    for model in args.baseline:
        nlp = spacy.load(model)
        examples = list(MultimodalCorpus(args.test)(nlp))
        scores.append(100 * evaluate_views(nlp, examples, ["text"])["text"]["ents_f"])
        log(f"{model}: baseline {scores[-1]:.2f}")
    return scores


def summarise(models: List[Dict], baseline: List[float]) -> Dict[str, Dict]:
    """Per condition: mean cross F1, its gain over (b)'s mean, the share of the
    as-trained gain kept, and whether it falls below the text view (mean, or
    for any seed)."""
    b = statistics.mean(baseline)
    text = statistics.mean(m["text"] for m in models)
    table = {}
    for name in CONDITIONS:
        crosses = [m["conditions"][name]["cross"] for m in models]
        table[name] = {"cross": statistics.mean(crosses), "cross_per_seed": crosses,
                       "gain": statistics.mean(crosses) - b,
                       "below_text": statistics.mean(crosses) < text,
                       "below_text_any_seed": any(m["conditions"][name]["cross"] < m["text"]
                                                  for m in models)}
    as_trained = table["as trained"]["gain"]
    for row in table.values():
        row["share"] = row["gain"] / as_trained if as_trained > 0 else None
    return table


def markdown(table: Dict[str, Dict], text: float, baseline: Sequence[float], n_models: int) -> str:
    """The table as it goes in docs/benchmarks.md."""
    lines = [f"| knowledge at inference | cross F1 | gain over (b) {statistics.mean(baseline):.2f} "
             f"| share of the gain kept | below the text view ({text:.2f})? |",
             "|---|---|---|---|---|"]
    for name, row in table.items():
        share = "n/a" if row["share"] is None else f"{round(100 * row['share'])} %"
        lines.append(f"| {name} | {row['cross']:.2f} | {row['gain']:+.2f} | {share} "
                     f"| {'yes' if row['below_text'] else 'no'} |")
    return "\n".join(lines) + (f"\n\nTwitter-2015 test; (d) {n_models} seed(s), "
                               f"(b) {len(baseline)} seed(s); rewriting seeded.")


def ready_model(path: str) -> Path:
    """A model-best folder whose run has finished (its test.json is beside it)."""
    model = Path(path)
    if not (model / "meta.json").exists():
        raise SystemExit(f"{model}: not a trained pipeline (no meta.json)")
    if not (model.parent / "test.json").exists():
        raise SystemExit(f"{model}: its run has not finished ({model.parent / 'test.json'} missing)")
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, type=ready_model,
                        help="(d) model-best folders, one per training seed")
    baseline = parser.add_mutually_exclusive_group(required=True)
    baseline.add_argument("--baseline", nargs="+", type=ready_model, default=[],
                          help="(b) model-best folders, scored on the test set")
    baseline.add_argument("--baseline-f1", nargs="+", type=float, default=[],
                          help="(b)'s test F1 per seed, in %%")
    parser.add_argument("--test", type=Path, required=True, help="test.spacy with PGIM knowledge")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rewriting")
    parser.add_argument("--output", type=Path, default=Path("bench/results/knowledge_shift.json"))
    args = parser.parse_args(argv)
    if not args.test.is_file():
        parser.error(f"--test {args.test}: no such file")
    start = time.time()

    def log(line: str) -> None:
        print(f"[{time.time() - start:6.0f}s] {line}", file=sys.stderr, flush=True)

    baseline_f1 = baseline_scores(args, log)
    models = [score_model(model, args.test, args.seed, log) for model in args.models]
    table = summarise(models, baseline_f1)
    text = statistics.mean(m["text"] for m in models)
    report = markdown(table, text, baseline_f1, len(models))
    replace_json(args.output, {
        "test": str(args.test), "rewrite_seed": args.seed, "baseline_f1": baseline_f1,
        "baseline_models": [str(m) for m in args.baseline], "text_view": text,
        "models": models, "table": table, "markdown": report,
        "minutes": (time.time() - start) / 60})
    print(report)


if __name__ == "__main__":
    main()
