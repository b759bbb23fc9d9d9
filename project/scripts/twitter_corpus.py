"""Convert one Twitter MNER dataset (the UMT files) to .spacy with the chosen context.

    python scripts/twitter_corpus.py assets/twitter2015 corpus/twitter2015 --context knowledge

`captions`: the BLIP-2 captions (blip2_captions.txt); `knowledge`: PGIM's
language-model knowledge (pgim_knowledge.txt, see scripts/pgim_knowledge.py);
`all`: both. The splits train/valid/test become train/dev/test.spacy.
"""
from pathlib import Path

import typer

from spacy_ita.cli.convert import convert_cli

CONTEXTS = {
    "captions": {"captions": "blip2_captions.txt"},
    "knowledge": {"knowledge": "pgim_knowledge.txt"},
    "all": {"captions": "blip2_captions.txt", "knowledge": "pgim_knowledge.txt"},
}
SPLITS = {"train": "train", "valid": "dev", "test": "test"}


def main(
    assets: Path = typer.Argument(..., exists=True, file_okay=False,
                                  help="Folder with train/valid/test.txt and the context files"),
    output: Path = typer.Argument(..., help="Folder for train/dev/test.spacy"),
    context: str = typer.Option("captions", "--context", "-c",
                                help=f"One of {', '.join(CONTEXTS)}"),
) -> None:
    """Write the three splits of ASSETS to OUTPUT with the context files of --context."""
    if context not in CONTEXTS:
        raise typer.BadParameter(f"{context!r}; choose from {', '.join(CONTEXTS)}",
                                 param_hint="--context")
    files = {field: assets / name for field, name in CONTEXTS[context].items()}
    for path in files.values():
        if not path.is_file():
            raise typer.BadParameter(f"{path} not found (run `spacy project assets`)",
                                     param_hint="--context")
    output.mkdir(parents=True, exist_ok=True)
    for split, name in SPLITS.items():
        convert_cli(assets / f"{split}.txt", output / f"{name}.spacy",
                    captions=files.get("captions"), knowledge=files.get("knowledge"),
                    lang="en", n_sents=1, file_format=None, inline_field="knowledge")


if __name__ == "__main__":
    typer.run(main)
