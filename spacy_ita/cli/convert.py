"""`python -m spacy_ita convert`: MNER text files to `.spacy` DocBins."""
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import typer
from spacy.tokens import Doc, DocBin

from ..converters import read_mner
from ..files import replace_file
from . import app


def group_posts(docs: Iterable[Doc], n_posts: int) -> Iterator[Doc]:
    """Join every n_posts Docs into one, each post starting a sentence.

    Only for posts without image ids: a Doc has one image.
    """
    batch: List[Doc] = []
    for doc in docs:
        if doc._.image_id is not None:
            raise ValueError(
                f"post IMGID:{doc._.image_id}: --n-sents {n_posts} would join posts with "
                "different images; use --n-sents 1 for files with IMGID lines"
            )
        batch.append(doc)
        if len(batch) == n_posts:
            yield _join(batch)
            batch = []
    if batch:
        yield _join(batch)


def _join(batch: List[Doc]) -> Doc:
    joined = Doc.from_docs(batch)
    start = 0
    for doc in batch:
        for i in range(start, start + len(doc)):
            joined[i].is_sent_start = i == start
        start += len(doc)
    return joined


@app.command("convert")
def convert_cli(
    input_path: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, metavar="INPUT",
        help="MNER file: 'IMGID:<id>' line, 'token<TAB>tag' lines, blank line, per post "
        "(or plain two-column CoNLL without IMGID lines).",
    ),
    output: Path = typer.Argument(
        ..., metavar="OUTPUT",
        help="Output .spacy file, or a directory to write <input name>.spacy into.",
    ),
    captions: Optional[Path] = typer.Option(
        None, "--captions", "-c", exists=True, dir_okay=False, readable=True, metavar="FILE",
        help="Captions file with '<id>.jpg :<caption>' lines; a post whose image has a "
        "caption gets it as Doc._.visual_context.captions.",
    ),
    knowledge: Optional[Path] = typer.Option(
        None, "--knowledge", "-k", exists=True, dir_okay=False, readable=True, metavar="FILE",
        help="Knowledge file with '<id>.jpg :<text>' lines (e.g. a language model's "
        "answers, as PGIM released them); a post whose image has one gets it as "
        "Doc._.visual_context.knowledge.",
    ),
    lang: str = typer.Option(
        "en", "--lang", "-l", metavar="LANG", help="Language code of the blank vocab."
    ),
    n_sents: int = typer.Option(
        1, "--n-sents", "-n", min=1, metavar="N",
        help="Posts per output Doc. Only 1 for files with image ids, since a Doc has "
        "one image.",
    ),
) -> None:
    """Convert an MNER (Twitter-2015/2017 style) file to a .spacy DocBin.

    Tags may be BIO, BIOES or BILOU over any labels; an orphan I-X opens an
    entity (conlleval). The DocBin stores user data, so Doc._.image_id and
    Doc._.visual_context are kept. Prints the number of docs and entities.
    """
    output_path = output if output.suffix == ".spacy" else output / f"{input_path.stem}.spacy"
    doc_bin = DocBin(store_user_data=True)
    labels: Counter = Counter()
    n_docs = n_with_context = n_empty = 0
    try:
        docs = read_mner(input_path, captions, lang=lang, knowledge_path=knowledge)
        if n_sents > 1:
            docs = group_posts(docs, n_sents)
        for doc in docs:
            doc_bin.add(doc)
            n_docs += 1
            context = doc._.visual_context
            if context is not None and context.is_empty():
                n_empty += 1
            elif context is not None:
                n_with_context += 1
            labels.update(ent.label_ for ent in doc.ents)
        output_path.parent.mkdir(parents=True, exist_ok=True)
        replace_file(output_path, doc_bin.to_bytes())
    except (ValueError, OSError, ImportError) as err:  # ImportError: unknown --lang
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"Wrote {n_docs} docs with {sum(labels.values())} entities to {output_path}")
    for label, count in sorted(labels.items(), key=lambda item: (-item[1], item[0])):
        typer.echo(f"  {label}\t{count}")
    if captions is not None or knowledge is not None:
        empty = f" ({n_empty} more an empty one)" if n_empty else ""
        typer.echo(f"{n_with_context} of {n_docs} docs have a context{empty}")
