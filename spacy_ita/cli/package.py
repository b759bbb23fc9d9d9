"""`python -m spacy_ita package` and `annotate`: a trained pipeline as an
installable wheel, and one post through a pipeline.

`package` builds the wheel with `spacy package`, requiring spacy-ita (and the
vision extra and the bundled encoder's package where the pipeline needs
them). `annotate` runs an installed or saved pipeline on one post, the check
that a package works where it is installed.
"""
import json
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Iterable, List, Optional, Union

import typer
from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version
from spacy.language import Language
from wasabi import msg

from ..corpus.readers import MultimodalCorpus
from ..files import replace_directory
from ..ner.encoders import ENCODER_DISTRIBUTIONS
from . import app
from .extract import OCREngine, build_extraction_nlp
from .options import refuse_a_broken_link, signals_end_the_run_cleanly

# The longest file name a build makes is the wheel's, "{lang}_{name}-{version}-py3-none-any.whl":
# a name and version this long together leave it (and a language code) within a file system's 255.
MAX_NAME_AND_VERSION = 200


def _minor_range(distribution: str) -> str:
    from spacy.util import get_minor_version_range

    return f"{distribution}{get_minor_version_range(metadata.version(distribution))}"


def _uses_images(corpus: Path, lang: str) -> bool:
    """Whether the corpus's posts carry images (so their contexts came from
    extractors); read into a blank vocab, so that the package's keeps none of its strings."""
    import spacy

    return any(doc._.image is not None
               for doc in MultimodalCorpus(corpus).read_docs(spacy.blank(lang)))


def _check_name_and_version(name: str, version: str) -> None:
    """Refuse a --name or --version that cannot name the package's folder and
    wheel, before anything is loaded or written (a version could climb out of OUTPUT_DIR)."""
    from spacy.cli.package import _is_permitted_package_name

    if not (name.isidentifier() and _is_permitted_package_name(name)):
        msg.fail(f"--name {name}: not a package name (ASCII letters, digits and _, starting "
                 "with a letter or digit)", exits=1)
    try:
        normal = str(Version(version))
    except InvalidVersion:
        msg.fail(f"--version {version}: not a PEP 440 version (e.g. 0.1.0, 1.0.0rc1)", exits=1)
    if normal != version:
        msg.fail(f"--version {version}: write it as {normal}, PEP 440's normal form (the "
                 "wheel's)", exits=1)
    if len(name) + len(version) > MAX_NAME_AND_VERSION:
        msg.fail(f"--version {version}: too long with --name {name} ({len(name) + len(version)} "
                 f"characters together; at most {MAX_NAME_AND_VERSION} keep the wheel's file name "
                 "within 255)", exits=1)


def _load_pipeline(model: Union[str, Path]) -> Language:
    """spacy.load(model), a folder or an installed package, or a one-line error
    naming what stops it: spaCy's own error for a broken meta.json does not say
    which file it read."""
    import spacy
    from spacy.util import load_meta

    if Path(model).is_dir():
        meta = Path(model) / "meta.json"
        if not meta.is_file():
            msg.fail(f"{model} is not a pipeline: it has no meta.json", exits=1)
        try:
            load_meta(meta)
        except (OSError, ValueError) as err:
            msg.fail(f"{meta} is broken: {err}", exits=1)
    try:
        return spacy.load(model)
    except (OSError, ValueError) as err:
        msg.fail(f"{model} is not a pipeline spaCy can load: {' '.join(str(err).split())}",
                 exits=1)


def _normal(requirements: Iterable[str]) -> List[str]:
    """Requirements as packaging writes them, sorted: one spelling for one requirement."""
    return sorted(str(Requirement(requirement)) for requirement in requirements)


def _wheel_requirements(wheel: Path) -> List[str]:
    """The Requires-Dist of the wheel's METADATA, as `_normal` writes them."""
    dist_info = next(path for path in zipfile.Path(wheel).iterdir()
                     if path.name.endswith(".dist-info"))
    return _normal(metadata.PathDistribution(dist_info).requires or [])


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
    from spacy.cli.package import package

    _check_name_and_version(name, version)
    nlp = _load_pipeline(model)
    if "ita_ner" not in nlp.pipe_names:
        msg.fail(f"{model} has no ita_ner component (its components: "
                 f"{', '.join(nlp.pipe_names) or 'none'})", exits=1)
    if name.startswith(f"{nlp.lang}_"):
        msg.fail(f"--name {name}: leave out the language prefix '{nlp.lang}_' (spaCy adds "
                 "it)", exits=1)
    target = output_dir / f"{nlp.lang}_{name}-{version}"
    # --force would replace the pipeline itself (or the folder holding it) with the package.
    here, pipeline = target.resolve(), model.resolve()
    if here.is_relative_to(pipeline) or pipeline.is_relative_to(here):
        msg.fail(f"The package folder {target} is MODEL ({model}), holds it or is in it; "
                 "choose another OUTPUT_DIR", exits=1)
    if target.exists() and not force:
        msg.fail(f"{target} exists already; --force replaces it", exits=1)
    refuse_a_broken_link(target, f"OUTPUT_DIR {output_dir}")
    try:
        uses_images = context_from is not None and _uses_images(context_from, nlp.lang)
    except (OSError, ValueError) as err:
        msg.fail(f"--context-from: {err}", exits=1)
    requirements: List[str] = []
    if uses_images and "ita_context" not in nlp.pipe_names:
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
    # spaCy's package names its folders from the meta's lang, and its setup.py
    # requires the meta's setup_requires too: the pipeline's meta.json sets neither.
    nlp.meta["lang"] = nlp.lang
    setup_requires = nlp.meta.pop("setup_requires", None)
    if setup_requires:
        msg.warn(f"{model / 'meta.json'}: its setup_requires ({setup_requires}) are left out of "
                 "the wheel's requirements")
    nlp.meta["requirements"] = requirements
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg.fail(f"OUTPUT_DIR {output_dir}: cannot make the folder ({err})", exits=1)
    # Built beside the target and swapped into place only when complete: a failed
    # or stopped build (or a check of it) leaves nothing in OUTPUT_DIR, and an
    # old package it was to replace stays.
    with signals_end_the_run_cleanly(), \
            tempfile.TemporaryDirectory(dir=output_dir, prefix=f".{target.name}.") as tmp:
        staged, build = Path(tmp) / "pipeline", Path(tmp) / "build"
        nlp.to_disk(staged)
        build.mkdir()
        package(staged, build, name=name, version=version, create_sdist=False,
                create_wheel=True, silent=False)
        built = json.loads((build / target.name / "meta.json").read_text())
        if not any(req.startswith("spacy-ita") for req in built["requirements"]):
            msg.fail("The package does not require spacy-ita", built["requirements"], exits=1)
        wheel = next((build / target.name / "dist").glob("*.whl"))
        required = _wheel_requirements(wheel)
        if required != _normal(built["requirements"]):
            msg.fail(f"The wheel requires {', '.join(required) or 'nothing'}, not "
                     f"{', '.join(built['requirements'])}", exits=1)
        replace_directory(target, (build / target.name).rename)
    wheel = target / "dist" / wheel.name
    msg.good(f"Built {wheel}: pipeline {', '.join(nlp.pipe_names)}; requirements: "
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
    from ..visual_context import VisualContext

    nlp = _load_pipeline(model)
    doc = nlp.make_doc(text)
    reads_images = "ita_context" in nlp.pipe_names
    if image is not None and not reads_images:
        msg.warn(f"--image {image} is not read: the pipeline has no ita_context (--context "
                 "gives it a precomputed one)")
    if reads_images and image is not None:
        doc._.image = str(image)
        source = f"ita_context on {image.name}"
    elif context is not None:
        try:
            doc._.visual_context = VisualContext.from_dict(json.loads(context))
        except (TypeError, ValueError) as err:  # not JSON, or not a visual context
            msg.fail(f"--context: {err}", exits=1)
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
