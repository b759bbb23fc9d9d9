"""How much of a split's gold entities the visual context could give away.

Counts the gold entities of which at least one word (longer than 2 characters)
also appears in the post's visual context, per type, and the mean context
length. A low share means that the context can only help the tagger
indirectly (scene: "a man on a stage"), never by naming the entity.

    python bench/caption_overlap.py                       # Twitter-2015 test, BLIP-2 captions
    python bench/caption_overlap.py --split valid
"""
import argparse
from collections import Counter
from pathlib import Path

from spacy_ita.corpus.mner import read_mner

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "twitter2015"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with <split>.txt and blip2_captions.txt")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    docs = list(read_mner(args.data / f"{args.split}.txt", args.data / "blip2_captions.txt"))
    totals, shared = Counter(), Counter()
    context_words = []
    for doc in docs:
        context = doc._.visual_context
        words = set(context.render().lower().split()) if context is not None else set()
        context_words.append(len(context.render().split()) if context is not None else 0)
        for ent in doc.ents:
            totals[ent.label_] += 1
            shared[ent.label_] += any(len(t.text) > 2 and t.text.lower() in words for t in ent)
    n_total, n_shared = sum(totals.values()), sum(shared.values())
    print(f"{args.split}: {len(docs)} posts, mean context {sum(context_words) / len(docs):.1f} words")
    print(f"gold entities with a word in the context: {n_shared} of {n_total} ({100 * n_shared / n_total:.1f}%)")
    for label in sorted(totals):
        print(f"  {label:<6} {shared[label]:>4} of {totals[label]:>4} ({100 * shared[label] / totals[label]:.1f}%)")


if __name__ == "__main__":
    main()
