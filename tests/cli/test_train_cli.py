"""`python -m spacy_ita train`'s command line as `spacy train` has it: `--code`,
`--section.key value` overrides and config errors reported, not raised."""
import re

import spacy
from typer.testing import CliRunner

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
