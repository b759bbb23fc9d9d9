"""A training corpus whose knowledge varies as another LM's would: each training
post's knowledge is left as PGIM wrote it or rewritten as one of the shifts of
bench_knowledge_shift.py (types renamed to the label set, then 30 % of the
mentions dropped, 30 % spurious mentions added, or both).

The posts are split at random into as many equal groups as there are
conditions, and each group gets one condition, so a model trained on it sees
free-form and label-set types, missing and spurious mentions. Dev and test are
copied unchanged: checkpoints are still chosen on PGIM's own dev knowledge.

    python bench/augment_knowledge.py WORK/corpus-knowledge WORK/corpus-knowledge-aug
"""
import argparse
import json
import random
import shutil
from pathlib import Path

from spacy.tokens import DocBin
from spacy.training import Example
from spacy.vocab import Vocab

import spacy_ita  # noqa: F401  (registers the visual context's msgpack hooks)
from bench_knowledge_shift import CONDITIONS, rewrite_knowledge


def augment(docs, seed: int):
    """The docs with their knowledge rewritten, one condition per random group, and counts."""
    order = list(range(len(docs)))
    random.Random(f"{seed}-groups").shuffle(order)
    names = list(CONDITIONS)
    augmented, counts = list(docs), {}
    for g, name in enumerate(names):
        group = order[g::len(names)]
        shift = CONDITIONS[name]
        counts[name] = {"posts": len(group)}
        if shift is None:
            continue
        examples = [Example(docs[i].copy(), docs[i]) for i in group]
        rewritten, shift_counts = rewrite_knowledge(examples, *shift, seed)
        counts[name].update(shift_counts)
        for i, example in zip(group, rewritten):
            augmented[i] = example.predicted
    return augmented, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path, help="folder with train/dev/test.spacy (PGIM knowledge)")
    parser.add_argument("output", type=Path, help="folder for the augmented corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of the groups and the rewriting")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    docs = list(DocBin().from_disk(args.corpus / "train.spacy").get_docs(Vocab()))
    augmented, counts = augment(docs, args.seed)
    DocBin(docs=augmented, store_user_data=True).to_disk(args.output / "train.spacy")
    for split in ("dev", "test"):
        shutil.copy(args.corpus / f"{split}.spacy", args.output / f"{split}.spacy")
    (args.output / "augmentation.json").write_text(json.dumps({"seed": args.seed, "groups": counts}, indent=2))
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
