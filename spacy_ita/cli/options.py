"""What several commands share: how a trained pipeline is completed and run
(`apply`, `serve`), how a run ends on SIGTERM (`apply`, `extract`, `package`),
and how outputs are checked against what a run reads or cannot write."""
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from wasabi import msg

from ..bulk.local import STOPPING_SIGNALS
from ..context.config import OCREngine

PIPELINE_OPTIONS = {
    "ocr": typer.Option(OCREngine.rapidocr, "--ocr", metavar="ENGINE",
                        help="OCR engine of the ita_context added to a pipeline "
                        "that has none: rapidocr, easyocr, tesseract or none."),
    "tags": typer.Option(True, "--tags/--no-tags",
                         help="EfficientNet object tags in that ita_context."),
    "add_context": typer.Option(
        True, "--context/--no-context",
        help="Add ita_context to a pipeline without one (images -> visual context)."),
    "cache": typer.Option(None, "--cache", metavar="FILE",
                          help="SQLite cache of visual contexts, shared across runs."),
    "gpu_id": typer.Option(-1, "--gpu-id", "-g", help="GPU for the tagger; -1 for CPU."),
    "precision": typer.Option(
        None, "--precision", metavar="MODE",
        help="ita_ner's encoder: auto (bf16 where native), bf16 or fp32 (default: the "
        "pipeline's own)."),
    "code": typer.Option(None, "--code", exists=True, dir_okay=False,
                         help="Python file with custom components to import."),
    "allow_private_urls": typer.Option(
        False, "--allow-private-urls",
        help="Also fetch image URLs on loopback, private, link-local, multicast and "
        "reserved addresses."),
}


def pipeline_settings(add_context: bool, ocr: OCREngine, tags: bool, cache: Optional[Path],
                      gpu_id: int, precision: Optional[str], code: Optional[Path]):
    """The PipelineSettings that PIPELINE_OPTIONS' values ask for."""
    from ..bulk import PipelineSettings

    return PipelineSettings(add_context, ocr.value, tags, cache, gpu_id, precision, code)


@contextmanager
def signals_end_the_run_cleanly() -> Iterator[None]:
    """SIGTERM and SIGHUP (a scheduler, `timeout`, a closed terminal) end the
    run through its clean-up, as Ctrl-C does: a half-written output goes, and
    apply's rows written stay while its lock file goes with its note of the
    batch in flight (the next run does not take the post being tagged for one
    that killed the process). The exit status is the signal's usual one (143
    for SIGTERM; Ray, once started, puts its own handler in, which exits with
    15); a second signal kills at once. Only the main thread can take signals: elsewhere (the CLI
    called from a thread) they are left as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def stop(signum, _frame) -> None:
        for number in STOPPING_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    before = {number: signal.signal(number, stop) for number in STOPPING_SIGNALS}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file, through links too; where one is not
    made yet, whether they resolve to one path."""
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def refuse_a_broken_link(path: Path, what: str) -> None:
    """Refuse, up front, a symlink to nothing where a folder is to be made:
    mkdir and rename fail on it only once the work is done."""
    if path.is_symlink() and not path.exists():
        msg.fail(f"{what}: {path} is a link to {os.readlink(path)}, which does not exist",
                 exits=1)
