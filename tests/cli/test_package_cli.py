"""`python -m spacy_ita package`'s refusals, before anything is built."""
import re

import pytest
import spacy
from typer.testing import CliRunner

from helpers import trained_pipeline
from spacy_ita.cli import app


@pytest.fixture(scope="module")
def pipeline_dir(tiny_encoder, tmp_path_factory):
    path = tmp_path_factory.mktemp("package") / "pipeline"
    trained_pipeline(tiny_encoder).to_disk(path)
    return path


def package(*args):
    result = CliRunner().invoke(app, ["package", *map(str, args)])
    return result.exit_code, " ".join(re.sub(r"\x1b\[[0-9;]*m", "", result.output).split())


def test_what_package_refuses(pipeline_dir, tmp_path):
    spacy.blank("en").to_disk(tmp_path / "blank")
    code, output = package(tmp_path / "blank", tmp_path / "out", "--name", "x")
    assert code == 1 and "has no ita_ner component (its components: none)" in output
    code, output = package(pipeline_dir, tmp_path / "out", "--name", "en_x")
    assert code == 1 and "leave out the language prefix 'en_'" in output
    kept = tmp_path / "out" / "en_x-0.1.0" / "notes.txt"
    kept.parent.mkdir(parents=True)
    kept.write_text("mine")
    code, output = package(pipeline_dir, tmp_path / "out", "--name", "x")
    assert code == 1 and "en_x-0.1.0 exists already; --force replaces it" in output
    assert kept.read_text() == "mine"
