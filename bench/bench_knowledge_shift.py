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

The 30 % are of the mentions that align with the post's tokens (the only ones
`ita_ner` reads: it drops knowledge that names nothing in the post), counted
over the whole test set, not per post. Each spurious mention goes to the post
of a randomly drawn mention, so posts with more mentions get more and posts
whose knowledge names nothing in the post get none (they stay text-only, as
they were). The rewriting is seeded (`--seed`, 0), so every model reads the
same rewritten posts. Gains are over the text-only baseline (b), averaged over
the given seeds; `share` is a condition's gain over the `as trained` gain.

    OMP_NUM_THREADS=1 python bench/bench_knowledge_shift.py \
        --models WORK/d-seed0/model-best --baseline WORK/b-seed0/model-best \
        --test WORK/corpus-knowledge/test.spacy --output bench/results/knowledge_shift.json

`--baseline-f1 72.91` gives (b)'s test F1 instead of a model to score.
"""
import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import spacy
from spacy.training import Example

from spacy_ita.cli.evaluate import evaluate_views
from spacy_ita.corpus.readers import MultimodalCorpus
from spacy_ita.files import replace_json
from spacy_ita.knowledge.mentions import (Mention, align_mentions, matched_mentions, parse_mentions,
                                          render_mentions)
from spacy_ita.knowledge.task import DEFAULT_LABELS, entities_json, parse_answer
from spacy_ita.visual_context import get_visual_context

# Words of a free-form type that name each label, after the extractor's label
# descriptions (spacy_ita.knowledge.task.LABEL_DESCRIPTIONS) plus common synonyms.
TYPE_WORDS = {
    "PER": {"person", "people", "individual", "player", "politician", "artist", "author", "athlete",
            "actor", "actress", "character", "photographer", "celebrity", "singer", "rapper",
            "musician", "journalist", "figure", "president", "comedian", "director", "writer",
            "coach", "host", "name", "human", "reporter", "leader", "model", "dj", "star"},
    "LOC": {"location", "place", "city", "country", "region", "state", "venue", "landmark",
            "street", "geographic", "geographical", "area", "continent", "island", "park",
            "building", "town", "neighborhood", "stadium", "airport", "province", "county",
            "village", "road", "river", "mountain", "beach", "arena", "address"},
    "ORG": {"organization", "organisation", "company", "team", "band", "party", "institution",
            "outlet", "agency", "club", "university", "school", "network", "channel", "group",
            "business", "corporation", "government", "league", "station", "newspaper", "website",
            "restaurant", "store", "shop", "magazine", "charity", "department", "firm"},
    "OTHER": {"event", "product", "work", "brand", "holiday", "nationality", "movie", "film",
              "show", "book", "song", "album", "game", "award", "festival", "publication",
              "hashtag", "competition", "tournament", "series", "language", "religion"},
}
# Type words that say "an account": a person's unless another word says otherwise
# ("handle/organization" is ORG, "person/handle" and "handle" are PER).
ACCOUNT_WORDS = {"handle", "account", "username", "user", "twitter"}
SHARE = 0.3
CONDITIONS = {  # name: (share of mentions dropped, spurious mentions per mention), None: unchanged
    "as trained": None,
    "types renamed": (0.0, 0.0),
    "renamed, 30 % dropped": (SHARE, 0.0),
    "renamed, 30 % spurious added": (0.0, SHARE),
    "renamed, dropped and spurious": (SHARE, SHARE),
}
MAX_SPURIOUS_TOKENS = 3
_WORD = re.compile(r"[a-z]+")
_URL = re.compile(r"https?:|www\.", re.IGNORECASE)
_ALL_TYPE_WORDS = set().union(*TYPE_WORDS.values())


def label_for_type(kind: str, labels: Sequence[str] = DEFAULT_LABELS) -> str:
    """The label a free-form type maps to. OTHER is the catch-all, so a word that
    names another label wins over it in any `/`-part ("brand/company" is ORG),
    the first such part deciding; else a word of OTHER's; else an account is PER
    ("handle/brand" is OTHER, "handle" PER); else OTHER (dates, topics: an LM
    asked for the labels would have to put them somewhere)."""
    catch_all = labels[-1]
    parts = [{word[:-1] if word.endswith("s") and word[:-1] in _ALL_TYPE_WORDS else word
              for word in _WORD.findall(part)} for part in kind.lower().split("/")]
    for words in parts:
        for label in labels:
            if label != catch_all and words & TYPE_WORDS.get(label, set()):
                return label
    if any(words & TYPE_WORDS.get(catch_all, set()) for words in parts):
        return catch_all
    if any(words & ACCOUNT_WORDS for words in parts) and "PER" in labels:
        return "PER"
    return catch_all


def rename_types(mentions: Sequence[Mention]) -> List[Mention]:
    """The mentions typed with the label set, as the LM extractor would store its
    JSON answer (`parse_answer`: cleaned texts, repeats merged)."""
    answer = entities_json([Mention(m.text, label_for_type(m.type)) for m in mentions])
    return parse_answer(answer, DEFAULT_LABELS)


def knowledge_mentions(example: Example) -> Optional[List[Mention]]:
    """The mentions of a post's knowledge, without repeats (as `ita_ner` reads
    them), or None when the post has no knowledge."""
    context = get_visual_context(example.predicted)
    if context is None or not context.knowledge:
        return None
    return list(dict.fromkeys(m for item in context.knowledge for m in parse_mentions(item)))


def aligned_tokens(words: Sequence[str], mentions: Sequence[Mention]) -> Set[int]:
    """The indices of the tokens that some mention spells."""
    return {i for i, item in enumerate(align_mentions(words, mentions)) if item is not None}


def spurious_mention(example: Example, blocked: Set[int], rng: random.Random) -> Optional[Mention]:
    """A random span of the post's words (at most MAX_SPURIOUS_TOKENS, each with
    a letter or digit, no URL) that spells no token of `blocked` (gold
    entities, known mentions) wherever it aligns, with a random label; None if
    the post has no such span."""
    words = [token.text for token in example.predicted]
    wordlike = [any(c.isalnum() for c in word) and not _URL.match(word) for word in words]
    candidates = []
    for start in range(len(words)):
        for end in range(start + 1, min(len(words), start + MAX_SPURIOUS_TOKENS) + 1):
            if not wordlike[end - 1]:
                break
            mention = Mention(example.predicted[start:end].text, "")
            covered = aligned_tokens(words, [mention])
            if covered and not covered & blocked:
                candidates.append(mention)
    if not candidates:
        return None
    return Mention(rng.choice(candidates).text, rng.choice(DEFAULT_LABELS))


def rewrite_knowledge(
    examples: Sequence[Example], drop: float, spurious: float, seed: int = 0
) -> Tuple[List[Example], Dict[str, int]]:
    """The examples with each post's knowledge renamed to the label set, `drop`
    of the mentions found in posts removed and `spurious` times as many
    spurious mentions added (see the module's docstring), with counts."""
    renamed = [None if found is None else rename_types(found)
               for found in map(knowledge_mentions, examples)]
    words = [[token.text for token in eg.predicted] for eg in examples]
    found = [[] if mentions is None else matched_mentions(words[i], mentions)
             for i, mentions in enumerate(renamed)]
    pool = [(i, mention) for i, mentions in enumerate(found) for mention in mentions]
    dropped = set(random.Random(f"{seed}-drop").sample(pool, round(drop * len(pool))))
    added: Dict[int, List[Mention]] = {}
    n_spurious, n_added = round(spurious * len(pool)), 0
    rng = random.Random(f"{seed}-spurious")
    for i, _ in rng.sample(pool, len(pool)):
        if n_added == n_spurious:
            break
        gold = {token.i for ent in examples[i].reference.ents for token in ent}
        blocked = gold | aligned_tokens(words[i], renamed[i] + added.get(i, []))
        extra = spurious_mention(examples[i], blocked, rng)
        if extra is not None:
            added.setdefault(i, []).append(extra)
            n_added += 1
    rewritten = []
    for i, eg in enumerate(examples):
        doc = eg.predicted.copy()
        if renamed[i] is not None:
            kept = [m for m in renamed[i] if (i, m) not in dropped] + added.get(i, [])
            context = get_visual_context(doc)
            context.knowledge = [render_mentions(kept)] if kept else []
        rewritten.append(Example(doc, eg.reference))
    counts = {"mentions_in_posts": len(pool), "dropped": len(dropped),
              "spurious_added": n_added}
    return rewritten, counts


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
