"""`python -m spacy_ita convert`: MNER text files (plain or inline) to `.spacy`
DocBins, and `python -m spacy_ita export`: back again."""
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import spacy
import typer
from spacy.tokens import Doc, DocBin

from ..corpus.mner import EOS_TOKEN, detect_format, format_mner, read_mner
from ..corpus.readers import CorpusError, MultimodalCorpus
from ..files import replace_file
from ..visual_context import FIELDS
from . import app


class TextFormat(str, Enum):
    """The two layouts of an MNER text file."""

    mner = "mner"  # IMGID line, token<TAB>tag lines, blank line
    inline = "inline"  # the same, each post's context after a <EOS> token, tagged X


INLINE_FIELD_HELP = (f"Context field that the tokens after {EOS_TOKEN} are (inline format): "
                     + ", ".join(FIELDS) + ".")


def check_field(field: str) -> str:
    if field not in FIELDS:
        raise typer.BadParameter(f"{field!r} is not a context field; expected one of {FIELDS}")
    return field


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
        if doc._.visual_context is not None:
            raise ValueError(
                f"post {doc.text[:40]!r}: --n-sents {n_posts} would join posts with "
                "different contexts; use --n-sents 1 for posts with a context"
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
        f"(or plain two-column CoNLL without IMGID lines); in the inline format a {EOS_TOKEN} "
        "line and the post's context tokens, tagged X, follow its tokens.",
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
        help="Posts per output Doc. Only 1 for files with image ids or contexts, since a "
        "Doc has one image and one context.",
    ),
    file_format: Optional[TextFormat] = typer.Option(
        None, "--format", "-f",
        help=f"Layout of INPUT; default: inline if a line starts with {EOS_TOKEN}, else mner.",
    ),
    inline_field: str = typer.Option(
        "knowledge", "--inline-field", metavar="FIELD", callback=check_field,
        help=INLINE_FIELD_HELP,
    ),
) -> None:
    """Convert an MNER (Twitter-2015/2017 style) file, plain or inline (KB-NER,
    AdaSeq, PGIM, MoRe, RiVEG), to a .spacy DocBin.

    Tags may be BIO, BIOES or BILOU over any labels; an orphan I-X opens an
    entity (conlleval). The DocBin stores user data, so Doc._.image_id and
    Doc._.visual_context are kept. Prints the number of docs and entities.
    `export` writes it back.
    """
    output_path = output if output.suffix == ".spacy" else output / f"{input_path.stem}.spacy"
    try:
        inline = (file_format or detect_format(input_path)) == TextFormat.inline
        docs = read_mner(input_path, captions, lang=lang, knowledge_path=knowledge,
                         inline_field=inline_field if inline else None)
        counts = _write_docbin(group_posts(docs, n_sents) if n_sents > 1 else docs, output_path)
    except (ValueError, OSError, ImportError) as err:  # ImportError: unknown --lang
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1)
    labels = counts.labels
    typer.echo(f"Wrote {counts.docs} docs with {sum(labels.values())} entities to {output_path}")
    for label, count in sorted(labels.items(), key=lambda item: (-item[1], item[0])):
        typer.echo(f"  {label}\t{count}")
    if inline:
        typer.echo(f"Read the inline format: the context after {EOS_TOKEN} is in "
                   f"Doc._.visual_context.{inline_field}")
    if captions is not None or knowledge is not None or inline:
        empty = f" ({counts.empty_context} more an empty one)" if counts.empty_context else ""
        typer.echo(f"{counts.with_context} of {counts.docs} docs have a context{empty}")


@dataclass
class DocCounts:
    """What convert wrote: docs, docs with a context or an empty one, entities per label."""

    docs: int = 0
    with_context: int = 0
    empty_context: int = 0
    labels: Counter = field(default_factory=Counter)


def _write_docbin(docs: Iterable[Doc], output_path: Path) -> DocCounts:
    """Write the docs to a .spacy file (atomically) and count them."""
    doc_bin = DocBin(store_user_data=True)
    counts = DocCounts()
    for doc in docs:
        doc_bin.add(doc)
        counts.docs += 1
        context = doc._.visual_context
        if context is not None and context.is_empty():
            counts.empty_context += 1
        elif context is not None:
            counts.with_context += 1
        counts.labels.update(ent.label_ for ent in doc.ents)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(output_path, doc_bin.to_bytes())
    return counts


@app.command("export")
def export_cli(
    input_path: Path = typer.Argument(
        ..., exists=True, dir_okay=False, readable=True, metavar="INPUT",
        help="A .spacy file, e.g. from convert or extract.",
    ),
    output: Path = typer.Argument(..., metavar="OUTPUT", help="Output text file."),
    file_format: TextFormat = typer.Option(
        TextFormat.inline, "--format", "-f",
        help=f"inline: each post with a context gets a {EOS_TOKEN} line and the context's "
        "words, tagged X; mner: tokens and tags only.",
    ),
    inline_field: str = typer.Option(
        "knowledge", "--inline-field", metavar="FIELD", callback=check_field,
        help=INLINE_FIELD_HELP,
    ),
    lang: str = typer.Option(
        "en", "--lang", "-l", metavar="LANG", help="Language code of the blank vocab."
    ),
) -> None:
    """Write a .spacy DocBin as an MNER text file with BIO tags: the inline
    format the research code reads (default), or plain MNER. An IMGID line
    starts each post when the docs have image ids; `convert` reads it back."""
    try:
        # The corpus reader names the file and the doc that does not decode.
        docs = MultimodalCorpus(input_path).read_docs(spacy.blank(lang))
        field = inline_field if file_format == TextFormat.inline else None
        posts = list(format_mner(docs, inline_field=field))
        output.parent.mkdir(parents=True, exist_ok=True)
        replace_file(output, "".join(posts))
    except (CorpusError, OSError, ImportError) as err:
        typer.echo(f"Error: {err}", err=True)
        raise typer.Exit(code=1)
    except ValueError as err:  # a doc the MNER format cannot hold: "Doc 3 has no tokens"
        typer.echo(f"Error: {input_path}: {err}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"Wrote {len(posts)} posts to {output} ({file_format.value} format)")
