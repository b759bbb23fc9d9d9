"""`python -m spacy_ita train`: `spacy train` with checkpoints that survive a
kill, and `--resume` to go on from the last one.

Same arguments and config overrides as `spacy train`; for the same config and
seed it makes the same updates. See `spacy_ita.training.loop`.
"""
import os
from pathlib import Path
from typing import Optional

import typer
from spacy import util
from spacy.training.initialize import init_nlp
from wasabi import msg

from ..corpus.readers import CorpusError
from . import app
from .options import refuse_a_broken_link
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
             "and training data; otherwise train from the start (a checkpoint that does not "
             "load stops the command and is left as it is)"),
) -> None:
    """Train a pipeline like `spacy train`; a killed run leaves whole
    checkpoints, and `--resume` continues from the last one. Inputs are
    checked before anything is written (the checkpoints create the folder)."""
    from ..training.checkpoints import DamagedCheckpoint
    from ..training.loop import train

    overrides = parse_config_overrides(ctx.args)
    import_code(code_path)
    if resume and output_path is None:
        msg.fail("--resume needs --output: the checkpoints are in that folder", exits=1)
    if output_path is not None:
        existing = next(path for path in (output_path, *output_path.parents)
                        if os.path.lexists(path))
        refuse_a_broken_link(existing, f"--output {output_path}")
        if not existing.is_dir():
            msg.fail(f"--output {output_path}: {existing} is a file, not a folder", exits=1)
        msg.info(f"Saving to output directory: {output_path}")
    try:
        setup_gpu(use_gpu)
    except ValueError as err:  # thinc's: no CuPy, no GPU
        msg.fail(f"--gpu-id {use_gpu}: {err}; use --gpu-id -1 for the CPU", exits=1)
    with show_validation_error(config_path):
        config = util.load_config(config_path, overrides=overrides, interpolate=False)
        # Unset, spaCy's default (200) fills it in at initialisation.
        eval_frequency = config.interpolate().get("training", {}).get("eval_frequency", 1)
    if not isinstance(eval_frequency, int) or eval_frequency < 1:
        msg.fail(f"[training] eval_frequency must be at least 1 (a whole number of steps "
                 f"between evaluations and checkpoints), got {eval_frequency!r}", exits=1)
    msg.divider("Initializing pipeline")
    try:
        with show_validation_error(config_path, hint_fill=False):
            nlp = init_nlp(config, use_gpu=use_gpu)
        msg.good("Initialized pipeline")
        msg.divider("Training pipeline")
        train(nlp, output_path, use_gpu=use_gpu, resume=resume)
    except CorpusError as err:
        msg.fail(str(err), exits=1)
    except DamagedCheckpoint as err:
        msg.fail(f"Cannot resume: {err}. {output_path} is left as it is; to train from the "
                 "start instead, run the same command without --resume (which deletes its "
                 "checkpoints)", exits=1)
