"""The training corpus with its knowledge varied as other LMs would write it.

    python scripts/augment_knowledge.py corpus/twitter2015/released corpus/twitter2015 --knowledge augmented

`augmented` (the recipe): the training posts are split at random into five
equal groups, one kept as PGIM wrote it, the others with types renamed to the
label set, then 30 % of the mentions dropped, 30 % spurious mentions added, or
both (spacy_ita.knowledge.shift). A model trained on it keeps more of its gain
when a user's LM is not PGIM's ChatGPT (docs/benchmarks.md). `released` copies
the training posts unchanged. Dev and test are always copied unchanged, so
checkpoints are chosen and scored on PGIM's own knowledge.
"""
from pathlib import Path

import spacy
import typer
from spacy.tokens import DocBin
from wasabi import msg

from spacy_ita.corpus.readers import CorpusError, MultimodalCorpus
from spacy_ita.files import replace_file, replace_json
from spacy_ita.knowledge.shift import augment

KNOWLEDGE = ("augmented", "released")
SPLITS = ("train", "dev", "test")


def main(
    corpus: Path = typer.Argument(..., exists=True, file_okay=False,
                                  help="Folder with train/dev/test.spacy as converted"),
    output: Path = typer.Argument(..., help="Folder for train/dev/test.spacy and augmentation.json"),
    knowledge: str = typer.Option("augmented", "--knowledge", "-k",
                                  help=f"The training knowledge: {' or '.join(KNOWLEDGE)}"),
    seed: int = typer.Option(0, "--seed", help="Seed of the groups and the rewriting"),
) -> None:
    """Write CORPUS's splits to OUTPUT, the training knowledge as --knowledge says."""
    if knowledge not in KNOWLEDGE:
        raise typer.BadParameter(f"{knowledge!r}; choose from {', '.join(KNOWLEDGE)}",
                                 param_hint="--knowledge")
    for split in SPLITS:
        if not (corpus / f"{split}.spacy").is_file():
            raise typer.BadParameter(f"{corpus / f'{split}.spacy'} not found (run convert-twitter)",
                                     param_hint="CORPUS")
    blocking = next((path for path in (output, *output.parents)
                     if path.exists() and not path.is_dir()), None)
    if blocking is not None:
        raise typer.BadParameter(f"{blocking} is a file, not a folder", param_hint="OUTPUT")
    train = output / "train.spacy"
    if train.exists() and train.samefile(corpus / "train.spacy"):  # the same folder, or a link
        # Overwritten, PGIM's knowledge would be lost and a second run augment augmented posts.
        raise typer.BadParameter(f"{train} is CORPUS's own train.spacy; choose another folder",
                                 param_hint="OUTPUT")
    # Every split read before anything is written: a truncated one leaves OUTPUT as it was.
    nlp = spacy.blank("xx")
    try:
        docs = {split: list(MultimodalCorpus(corpus / f"{split}.spacy").read_docs(nlp))
                for split in SPLITS}
    except CorpusError as err:
        msg.fail(str(err), exits=1)
    output.mkdir(parents=True, exist_ok=True)
    for split in ("dev", "test"):
        replace_file(output / f"{split}.spacy", (corpus / f"{split}.spacy").read_bytes())
    if knowledge == "released":
        replace_file(output / "train.spacy", (corpus / "train.spacy").read_bytes())
        replace_json(output / "augmentation.json", {"knowledge": knowledge})
        msg.good(f"{output / 'train.spacy'}: the training knowledge as released")
        return
    augmented, counts = augment(docs["train"], seed)
    replace_file(output / "train.spacy", DocBin(docs=augmented, store_user_data=True).to_bytes())
    replace_json(output / "augmentation.json", {"knowledge": knowledge, "seed": seed, "groups": counts})
    msg.good(f"{output / 'train.spacy'}: {len(augmented)} posts, their knowledge augmented",
             ", ".join(f"{name}: {c['posts']}" for name, c in counts.items()))


if __name__ == "__main__":
    typer.run(main)
