"""`spacy_ita.encoders`: the bundled encoder, found offline under its registered name."""
from importlib import metadata
from pathlib import Path

from spacy.util import registry

from spacy_ita.encoders import BUNDLED_DISTRIBUTION, BUNDLED_ENCODER, bundled_encoder


def test_bundled_encoder_is_a_local_model_folder_under_its_registered_name():
    path = Path(bundled_encoder())
    assert (path / "config.json").is_file()
    assert any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    assert registry.misc.get(BUNDLED_ENCODER)() == str(path)
    # `spacy_ita package` pins the distribution that ships it
    assert metadata.version(BUNDLED_DISTRIBUTION)
