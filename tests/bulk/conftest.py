"""Fixtures shared by the tests of `apply`'s files."""
import pytest
import spacy


@pytest.fixture(scope="module")
def ruler(tmp_path_factory) -> str:
    """A blank English pipeline with an entity ruler, for tests about files,
    not about the model."""
    nlp = spacy.blank("en")
    nlp.add_pipe("entity_ruler").add_patterns([{"label": "LOC", "pattern": "Boston"},
                                               {"label": "PER", "pattern": "Kobe"}])
    path = tmp_path_factory.mktemp("ruler") / "model"
    nlp.to_disk(path)
    return str(path)
