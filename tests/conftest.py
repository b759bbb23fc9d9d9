"""Fixtures shared by tests/ and tests/robustness/; the builders behind them
are in helpers.py. No test may need a network: helpers switches the hub off."""
import pytest
import spacy

from helpers import make_tiny_encoder


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """The path of helpers.make_tiny_encoder's random 2-layer BERT, built once."""
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="module")
def vocab():
    """A blank English vocab for reading files, one per test module."""
    return spacy.blank("en").vocab
