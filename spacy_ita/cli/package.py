"""`python -m spacy_ita package` and `annotate`: a trained pipeline as an
installable wheel, and one post through a pipeline.

`package` builds the wheel with `spacy package`, requiring spacy-ita (and the
vision extra and the bundled encoder's package where the pipeline needs
them). `annotate` runs an installed or saved pipeline on one post, the check
that a package works where it is installed.
"""
import json
import tempfile
from importlib import metadata
from pathlib import Path
from typing import List, Optional

import typer
from wasabi import msg

from ..ner.encoders import ENCODER_DISTRIBUTIONS
from . import app
from .extract import OCREngine, build_extraction_nlp


def _minor_range(distribution: str) -> str:
    from spacy.util import get_minor_version_range

    return f"{distribution}{get_minor_version_range(metadata.version(distribution))}"


def _uses_images(corpus: Path) -> bool:
    """Whether the corpus's posts carry images (so their contexts came from extractors)."""
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    return any(doc._.image is not None for doc in DocBin().from_disk(corpus).get_docs(Vocab()))


@app.command("package")
def package_cli(
    model: Path = typer.Argument(..., exists=True, file_okay=False, help="Trained pipeline"),
    output_dir: Path = typer.Argument(..., help="Folder for the package (created if missing)"),
    name: str = typer.Option(..., "--name", "-n", help="Package name, e.g. ita_twitter2015"),
    version: str = typer.Option("0.1.0", "--version", "-V"),
    context_from: Optional[Path] = typer.Option(
        None, "--context-from", exists=True, dir_okay=False, metavar="CORPUS",
        help="Training corpus (.spacy): when its posts carry images and the pipeline has "
        "no ita_context, the package starts with one, so that it reads images itself."),
    ocr: OCREngine = typer.Option(OCREngine.rapidocr, "--ocr",
                                  help="OCR engine of that ita_context (as for `extract`)."),
    force: bool = typer.Option(False, "--force", "-f",
                               help="Replace a package folder of this name and version."),
) -> None:
    """Build an installable wheel of MODEL with `spacy package`.

    The wheel requires spacy-ita (found by `spacy package` from the config's
    registered functions, with the [vision] extra when the pipeline has
    ita_context) and the bundled encoder's package when the config names it.
    """
    import spacy
    from spacy.cli.package import package

    nlp = spacy.load(model)
    if "ita_ner" not in nlp.pipe_names:
        msg.fail(f"{model} has no ita_ner component (its components: "
                 f"{', '.join(nlp.pipe_names) or 'none'})", exits=1)
    if name.startswith(f"{nlp.lang}_"):
        msg.fail(f"--name {name}: leave out the language prefix '{nlp.lang}_' (spaCy adds "
                 "it)", exits=1)
    target = output_dir / f"{nlp.lang}_{name}-{version}"
    if target.exists() and not force:
        msg.fail(f"{target} exists already; --force replaces it", exits=1)
    requirements: List[str] = []
    if (context_from is not None and "ita_context" not in nlp.pipe_names
            and _uses_images(context_from)):
        extraction = build_extraction_nlp(ocr=ocr)
        settings = dict(extraction.config["components"]["ita_context"])
        settings.pop("factory")
        settings.update(on_error="warn", existing_context="keep")
        nlp.add_pipe("ita_context", first=True, config=settings)
    if "ita_context" in nlp.pipe_names:
        requirements.append(_minor_range("spacy-ita").replace("spacy-ita", "spacy-ita[vision]"))
    encoder = nlp.config["components"]["ita_ner"]["model"]["name"]
    if isinstance(encoder, dict):
        requirements.extend(map(_minor_range, ENCODER_DISTRIBUTIONS.get(encoder.get("@misc"), [])))
    nlp.meta["requirements"] = requirements
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pipeline"
        nlp.to_disk(staged)
        package(staged, output_dir, name=name, version=version, create_sdist=False,
                create_wheel=True, force=True, silent=False)
    built = json.loads((target / "meta.json").read_text())
    if not any(req.startswith("spacy-ita") for req in built["requirements"]):
        msg.fail("The package does not require spacy-ita", built["requirements"], exits=1)
    msg.good(f"Pipeline {', '.join(nlp.pipe_names)}; requirements: "
             f"{', '.join(built['requirements'])}")


@app.command("annotate")
def annotate_cli(
    model: str = typer.Argument(..., help="Pipeline: an installed package or a directory"),
    text: str = typer.Option(..., "--text", "-t", help="The post's text"),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="The post's image"),
    context: Optional[str] = typer.Option(
        None, "--context", "-c",
        help="Precomputed visual context as JSON, used when the pipeline has no ita_context"),
) -> None:
    """Run a pipeline on one post and print its visual context and entities.

    A pipeline with ita_context reads the image; any other gets the
    precomputed context attached to the Doc.
    """
    import spacy

    from ..visual_context import VisualContext

    nlp = spacy.load(model)
    doc = nlp.make_doc(text)
    if "ita_context" in nlp.pipe_names and image is not None:
        doc._.image = str(image)
        source = f"ita_context on {image.name}"
    elif context is not None:
        doc._.visual_context = VisualContext.from_dict(json.loads(context))
        source = "precomputed"
    else:
        source = "none"
    doc = nlp(doc)
    visual = doc._.visual_context
    typer.echo(f"pipeline: {model} ({', '.join(nlp.pipe_names)})")
    typer.echo(f"text: {doc.text}")
    typer.echo(f"visual context ({source}): {visual.render() if visual else ''}")
    ents = [f"{ent.text} [{ent.label_}]" for ent in doc.ents]
    typer.echo(f"entities: {', '.join(ents) if ents else '(none)'}")
