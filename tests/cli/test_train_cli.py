"""`python -m spacy_ita train`'s command line as `spacy train` has it: `--code`,
`--section.key value` overrides and config errors reported, not raised; bad
inputs refused before anything is written, and a `--resume` from a checkpoint
that does not load refused without touching the folder."""
import re

import pytest
import spacy
from typer.testing import CliRunner

from helpers import training_setup
from spacy_ita.cli import app


def blank_config(tmp_path):
    path = tmp_path / "config.cfg"
    spacy.blank("en").config.to_disk(path)
    return path


def invoke(*args: str):
    """The exit code and the output, without wasabi's colours and line wrapping."""
    result = CliRunner().invoke(app, ["train", *args])
    return result.exit_code, " ".join(re.sub(r"\x1b\[[0-9;]*m", "", result.output).split())


def test_code_that_is_missing_or_fails_stops_with_its_path(tmp_path):
    config = blank_config(tmp_path)
    missing = tmp_path / "missing.py"
    code, output = invoke(str(config), "--code", str(missing))
    assert code == 1 and f"Path to Python code not found {missing}" in output
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no registry today')\n", encoding="utf8")
    code, output = invoke(str(config), "--code", str(broken))
    assert code == 1
    assert f"Couldn't load Python code: {broken}" in output and "no registry today" in output


def test_code_is_imported_before_the_config_is_read(tmp_path):
    """The file runs (it could register the config's functions) and the CPU is
    chosen before the config's own error is reported."""
    config = blank_config(tmp_path)
    marker = tmp_path / "imported"
    code_file = tmp_path / "functions.py"
    code_file.write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf8")
    code, output = invoke(str(config), "--code", str(code_file), "--training.max_steps", "many")
    assert marker.exists()
    assert code == 1 and "Using CPU" in output


def test_an_override_that_breaks_the_config_is_reported_with_its_setting(tmp_path):
    code, output = invoke(str(blank_config(tmp_path)), "--training.max_steps", "many")
    assert code == 1
    assert "✘ Config validation error max_steps Input should be a valid integer" in output


def test_resume_without_an_output_folder_or_a_file_as_output_is_refused(tmp_path):
    config = blank_config(tmp_path)
    code, output = invoke(str(config), "--resume")
    assert code == 1 and "--resume needs --output" in output
    (tmp_path / "afile").write_text("x")
    code, output = invoke(str(config), "--output", str(tmp_path / "afile"))
    assert code == 1 and "is a file, not a folder" in output
    code, output = invoke(str(config), "--output", str(tmp_path / "afile" / "out"))
    assert code == 1 and f"{tmp_path / 'afile'} is a file, not a folder" in output


@pytest.mark.parametrize("value, shown", [("0", "0"), ("abc", "'abc'"), ("null", "None")])
def test_an_evaluation_frequency_that_is_no_whole_number_of_one_or_more_is_refused(
        tmp_path, value, shown):
    code, output = invoke(str(blank_config(tmp_path)), "--training.eval_frequency", value)
    assert code == 1 and "eval_frequency must be at least 1" in output
    assert output.endswith(f"got {shown}")


def test_a_link_to_nothing_as_output_is_refused_before_training(tmp_path):
    """Training went through, then writing its first checkpoint failed
    (FileExistsError: mkdir on the link)."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    for output_path in (link, link / "run"):
        code, output = invoke(str(blank_config(tmp_path)), "--output", str(output_path))
        assert code == 1
        assert output == (f"✘ --output {output_path}: {link} is a link to "
                          f"{tmp_path / 'nowhere'}, which does not exist")


def test_a_missing_corpus_is_named_and_no_output_folder_is_made(tmp_path, tiny_encoder):
    setup = training_setup(tmp_path, tiny_encoder)
    for train, dev in ((tmp_path / "nope.spacy", setup["corpus"]),
                       (setup["corpus"], tmp_path / "nope.spacy")):
        code, output = invoke(str(setup["config"]), "--output", str(setup["output"]),
                              "--paths.train", str(train), "--paths.dev", str(dev))
        assert code == 1, output
        assert f"corpus path {tmp_path / 'nope.spacy'} does not exist" in output
        assert not setup["output"].exists()


def test_a_checkpoint_that_does_not_load_stops_the_run_and_is_kept(tmp_path, tiny_encoder):
    setup = training_setup(tmp_path, tiny_encoder)
    args = [str(setup["config"]), "--output", str(setup["output"]),
            "--paths.train", str(setup["corpus"]), "--paths.dev", str(setup["corpus"]),
            "--training.eval_frequency", "1", "--training.max_steps", "2"]
    code, output = invoke(*args)
    assert code == 0, output
    (setup["output"] / "model-last" / "ita_ner" / "model").unlink()
    best = setup["output"] / "model-best" / "ita_ner" / "model"
    before = best.read_bytes()
    code, output = invoke(*args, "--resume")
    assert code == 1
    assert "Cannot resume:" in output and "cannot be loaded (FileNotFoundError" in output
    assert "is left as it is; to train from the start instead, run the same command " \
           "without --resume" in output
    assert best.read_bytes() == before
