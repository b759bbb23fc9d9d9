"""`python -m spacy_ita package`: its refusals, before anything is written, and
a build that is in OUTPUT_DIR whole or not at all."""
import importlib
import re
import sys

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
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
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


@pytest.fixture
def unusable_inputs(tmp_path):
    """tmp_path with a folder that is no pipeline, one with a broken meta.json, one
    with a broken config.cfg, a file, and posts that are not a .spacy corpus."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "meta.json").write_text('{"lang": "en",')
    (tmp_path / "badconfig").mkdir()
    (tmp_path / "badconfig" / "meta.json").write_text('{"lang": "en", "name": "x", "version": "1"}')
    (tmp_path / "badconfig" / "config.cfg").write_text("no sections\n")
    (tmp_path / "afile").write_text("")
    (tmp_path / "posts.jsonl").write_text('{"text": "Sunset over Phoenix"}\n')
    return tmp_path


@pytest.mark.parametrize("model, output_dir, options, error", [
    ("empty", "out", ["--name", "x"], "{tmp}/empty is not a pipeline: it has no meta.json"),
    ("broken", "out", ["--name", "x"], "{tmp}/broken/meta.json is broken: "),
    ("badconfig", "out", ["--name", "x"],
     "{tmp}/badconfig is not a pipeline spaCy can load: Config validation error"),
    ("pipeline", "afile", ["--name", "x"], "OUTPUT_DIR {tmp}/afile: cannot make the folder"),
    ("pipeline", "out", ["--name", "x", "--context-from", "{tmp}/posts.jsonl"],
     "--context-from: spacy-ita.MultimodalCorpus.v1: cannot read {tmp}/posts.jsonl: it is "
     "truncated or not a .spacy file"),
    ("pipeline", "out", ["--name", "not-a-module"], "--name not-a-module: not a package name"),
])
def test_unusable_inputs_fail_in_one_line_and_create_nothing(
        pipeline_dir, unusable_inputs, model, output_dir, options, error):
    tmp = unusable_inputs
    before = sorted(tmp.rglob("*"))
    code, output = package(pipeline_dir if model == "pipeline" else tmp / model, tmp / output_dir,
                           *(option.format(tmp=tmp) for option in options))
    assert code == 1 and error.format(tmp=tmp) in output
    assert sorted(tmp.rglob("*")) == before


@pytest.mark.parametrize("version, refusal", [
    ("1/../../outside", "not a PEP 440 version"),
    ("abc", "not a PEP 440 version"),
    ("v1.0", "write it as 1.0, PEP 440's normal form"),
])
def test_version_is_checked_before_anything_is_written(pipeline_dir, tmp_path, version, refusal):
    (tmp_path / "a").mkdir()
    code, output = package(pipeline_dir, tmp_path / "a" / "out", "--name", "x",
                           "--version", version, "--force")
    assert code == 1 and f"--version {version}: {refusal}" in output
    assert [p.name for p in tmp_path.rglob("*")] == ["a"]


def test_a_failed_build_leaves_nothing_and_keeps_what_it_was_to_replace(
        pipeline_dir, tmp_path, monkeypatch):
    # The module: the name spacy.cli.package is its function.
    spacy_package = importlib.import_module("spacy.cli.package")
    real = spacy_package.package

    def wheel_fails(*args, **kwargs):
        real(*args, **{**kwargs, "create_wheel": False})  # the package folder, then
        sys.exit(1)  # as spaCy exits when setup.py fails

    monkeypatch.setattr(spacy_package, "package", wheel_fails)
    code, _ = package(pipeline_dir, tmp_path / "out", "--name", "x")
    assert code == 1 and list((tmp_path / "out").iterdir()) == []
    kept = tmp_path / "out" / "en_x-0.1.0" / "notes.txt"
    kept.parent.mkdir()
    kept.write_text("mine")
    code, _ = package(pipeline_dir, tmp_path / "out", "--name", "x", "--force")
    assert code == 1 and sorted(p.name for p in (tmp_path / "out").rglob("*")) == [
        "en_x-0.1.0", "notes.txt"]


def test_the_package_is_moved_into_place_whole(pipeline_dir, tmp_path):
    old = tmp_path / "out" / "en_x-1.0.0rc1" / "notes.txt"
    old.parent.mkdir(parents=True)
    old.write_text("the last build")
    code, output = package(pipeline_dir, tmp_path / "out", "--name", "x", "--version", "1.0.0rc1",
                           "--force")
    wheel = tmp_path / "out" / "en_x-1.0.0rc1" / "dist" / "en_x-1.0.0rc1-py3-none-any.whl"
    assert code == 0 and f"Built {wheel}: pipeline ita_ner; requirements: spacy-ita" in output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["en_x-1.0.0rc1"]
    assert not old.exists()
