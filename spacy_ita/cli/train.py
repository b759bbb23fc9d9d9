"""`python -m spacy_ita train`: `spacy train` with checkpoints that survive a
kill, and `--resume` to go on from the last one.

Same arguments and config overrides as `spacy train`; for the same config and
seed it makes the same updates. See `spacy_ita.training.loop`.
"""
from pathlib import Path
from typing import Optional

import typer
from spacy import util
from spacy.training.initialize import init_nlp
from wasabi import msg

from . import app
from .spacy_cli import import_code, parse_config_overrides, setup_gpu, show_validation_error


@app.command("train",
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cli(
    ctx: typer.Context,
    config_path: Path = typer.Argument(..., help="Config file", exists=True, dir_okay=False),
    output_path: Optional[Path] = typer.Option(
        None, "--output", "--output-path", "-o", help="Folder for model-last and model-best"),
    code_path: Optional[Path] = typer.Option(
        None, "--code", "-c", help="Python file with registered functions to import"),
    use_gpu: int = typer.Option(-1, "--gpu-id", "-g", help="GPU id, or -1 for CPU"),
    resume: bool = typer.Option(
        False, "--resume", "-r",
        help="Go on from the checkpoint in the output folder if it comes from this config "
             "and training data; otherwise train from the start"),
) -> None:
    """Train a pipeline like `spacy train`; a killed run leaves whole
    checkpoints, and `--resume` continues from the last one."""
    from ..training.loop import train

    overrides = parse_config_overrides(ctx.args)
    import_code(code_path)
    if resume and output_path is None:
        msg.fail("--resume needs --output: the checkpoints are in that folder", exits=1)
    if output_path is not None and output_path.exists() and not output_path.is_dir():
        msg.fail(f"--output {output_path} is a file, not a folder", exits=1)
    if output_path is not None:
        output_path.mkdir(parents=True, exist_ok=True)
        msg.info(f"Saving to output directory: {output_path}")
    setup_gpu(use_gpu)
    with show_validation_error(config_path):
        config = util.load_config(config_path, overrides=overrides, interpolate=False)
    msg.divider("Initializing pipeline")
    with show_validation_error(config_path, hint_fill=False):
        nlp = init_nlp(config, use_gpu=use_gpu)
    msg.good("Initialized pipeline")
    msg.divider("Training pipeline")
    train(nlp, output_path, use_gpu=use_gpu, resume=resume)
