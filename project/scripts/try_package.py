"""Install the project's wheel into a throwaway venv and annotate a post with it there.

    python scripts/try_package.py packages/en_ita_demo-0.1.0/dist/en_ita_demo-0.1.0-py3-none-any.whl \
        --example corpus/demo/test.spacy --index 0

The check a user of the package would make: `pip install --no-deps` of the
wheel (offline), a bare `spacy.load` from a folder outside the repository
without PYTHONPATH, then `python -m spacy_ita annotate` on an example post.
"""
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import List, Optional

import typer
from wasabi import msg

import spacy_ita  # noqa: F401  (the Doc extensions of the example post)

LOAD_CHECK = ("import sys, spacy; nlp = spacy.load(sys.argv[1]); "
              "print(f'spacy.load({sys.argv[1]!r}): {nlp.pipe_names}')")


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


def main(
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
    import spacy

    from spacy_ita.corpus.readers import CorpusError, MultimodalCorpus

    try:
        docs = list(MultimodalCorpus(example, limit=index + 1).read_docs(spacy.blank("xx")))
    except CorpusError as err:
        msg.fail(str(err), exits=1)
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


if __name__ == "__main__":
    typer.run(main)
