"""The pieces of spaCy's own command line that `python -m spacy_ita train`
shares with `spacy train`, in one place.

`parse_config_overrides` and `show_validation_error` live in the private
`spacy.cli._util`, and spaCy exports no public equivalent. They are imported
here and nowhere else: copying them would let `--section.key value` overrides
(and the SPACY_CONFIG_OVERRIDES environment variable) and the config error
report drift from `spacy train`'s, which this command promises to match. A
spaCy release that moves them breaks this module only.
"""
from pathlib import Path
from typing import Optional

from spacy.cli._util import parse_config_overrides, show_validation_error  # noqa: F401
from spacy.util import import_file
from thinc.api import require_gpu
from thinc.util import gpu_is_available
from wasabi import msg

__all__ = ["import_code", "parse_config_overrides", "setup_gpu", "show_validation_error"]


def import_code(code_path: Optional[Path]) -> None:
    """Import the Python file of `--code`, which registers the config's custom
    functions; exit with the path when it is missing or fails to import."""
    if code_path is None:
        return
    if not code_path.exists():
        msg.fail("Path to Python code not found", code_path, exits=1)
    try:
        import_file("python_code", code_path)
    except Exception as err:
        msg.fail(f"Couldn't load Python code: {code_path}", err, exits=1)


def setup_gpu(use_gpu: int) -> None:
    """Run on GPU `use_gpu`, or on the CPU for -1 (with a hint when a GPU is there)."""
    if use_gpu >= 0:
        msg.info(f"Using GPU: {use_gpu}")
        require_gpu(use_gpu)
    else:
        msg.info("Using CPU")
        if gpu_is_available():
            msg.info("To switch to GPU 0, use the option: --gpu-id 0")
