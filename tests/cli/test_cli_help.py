"""Every option of every `python -m spacy_ita` command is readable in full in
its --help on an 80-column terminal (rich cuts what does not fit with '…')."""
import re

import pytest
import typer
from typer.testing import CliRunner

from spacy_ita.cli import app

COMMANDS = typer.main.get_command(app).commands


def test_all_commands_are_checked():
    assert {"convert", "export", "extract", "train", "evaluate", "apply", "package",
            "annotate"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_name_shows_whole_at_80_columns(name):
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    names = [opt for param in COMMANDS[name].params if param.param_type_name == "option"
             for opt in param.opts + param.secondary_opts if opt.startswith("--")]
    shown = set(re.split(r"[\s,]+", result.output))  # typer joins aliases with ','
    missing = [opt for opt in names + ["--help"] if opt not in shown]
    assert missing == [], result.output
