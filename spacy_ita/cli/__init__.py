"""Command line interface: `python -m spacy_ita COMMAND --help`."""
import typer

app = typer.Typer(
    name="spacy_ita",
    help="spacy-ita: multimodal NER with Image-Text Alignments",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a traceback must not print an API key held in a local
)


@app.callback()
def main() -> None:
    """spacy-ita: multimodal NER with Image-Text Alignments."""


# Each module registers its commands on `app`.
from . import apply, convert, evaluate, extract, package, serve, train  # noqa: E402,F401
