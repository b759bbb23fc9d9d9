"""`apply`'s settings dataclasses: docs/apply.md's Python snippets call apply
as it is, a wrong setting is refused when made, and the library builds the
ita_context it adds without importing the CLI."""
import ast
import inspect
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import spacy_ita.bulk
from spacy_ita.bulk import (Columns, LocalSettings, OutputSettings, PipelineSettings,
                            RaySettings, apply)

APPLY_DOC = Path(__file__).resolve().parents[2] / "docs" / "apply.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", APPLY_DOC.read_text(encoding="utf8"), re.S)


def test_the_python_snippets_of_apply_md_call_apply_as_it_is(monkeypatch):
    """Each snippet runs with `apply` swapped for a recorder: its settings
    must construct and its arguments bind to apply's real signature."""
    calls = []

    def recorder(*args, **kwargs):
        inspect.signature(apply).bind(*args, **kwargs)  # a TypeError for a wrong argument
        calls.append(kwargs)
        return spacy_ita.bulk.ApplySummary()

    monkeypatch.setattr(spacy_ita.bulk, "apply", recorder)
    for snippet in SNIPPETS:
        exec(snippet, {"model": "training/model-best"})
    assert len(SNIPPETS) >= 2 and len(calls) >= 3
    assert any(isinstance(call.get("engine"), RaySettings) for call in calls)
    assert any(isinstance(call.get("engine"), LocalSettings) for call in calls)


@pytest.mark.parametrize("make, message", [
    (lambda: PipelineSettings(ocr="paddle"), "ocr must be one of ['rapidocr', 'easyocr', "
                                             "'tesseract', 'none'], got 'paddle'"),
    (lambda: PipelineSettings(precision="fp16"), "Unknown ita_ner precision 'fp16'"),
    (lambda: LocalSettings(n_process=0), "n_process and threads must be at least 1, got 0"),
    (lambda: LocalSettings(threads=0), "n_process and threads must be at least 1, got 1 and 0"),
    (lambda: RaySettings(workers=0), "workers must be at least 1"),
    (lambda: OutputSettings(rows_per_part=0), "rows_per_part must be at least 1, got 0"),
    (lambda: Columns(keep=["entities"]), "cannot keep column(s) ['entities']"),
], ids=["ocr", "precision", "n_process", "threads", "workers", "rows_per_part", "keep"])
def test_a_wrong_setting_is_refused_when_made(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_a_wrong_engine_or_batch_size_is_refused_before_reading(tmp_path):
    for kwargs, message in [({"engine": "spark"}, "engine must be one of ('local', 'ray')"),
                            ({"batch_size": 0}, "batch_size must be at least 1, got 0")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            apply("no-model", tmp_path / "missing.jsonl", tmp_path / "out.jsonl", **kwargs)
    assert not (tmp_path / "out.jsonl").exists()


def test_no_module_outside_the_cli_imports_it():
    """The library never imports the CLI (issue 20): bulk builds the
    ita_context it adds from spacy_ita.context.config. Only the entry point
    `python -m spacy_ita` (__main__) may."""
    package = Path(spacy_ita.bulk.__file__).resolve().parents[1]
    offenders = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package)
        if where.parts[0] == "cli" or where.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            offenders += [f"{where}:{node.lineno}: {name}" for name in names
                          if _names_the_cli(name, len(where.parts) - 1)]
    assert not offenders


def _names_the_cli(module: str, depth: int) -> bool:
    """Whether an import of `module`, written in a file `depth` folders below
    the package, names spacy_ita.cli or something in it."""
    dots = len(module) - len(module.lstrip("."))
    if dots:
        if dots - 1 != depth:  # a relative import that does not start at the package
            return False
        module = "spacy_ita." + module.lstrip(".")
    return module == "spacy_ita.cli" or module.startswith("spacy_ita.cli.")


def test_worker_processes_forked_after_opencv_ran_threads_do_not_hang(tmp_path):
    """OpenCV's thread pool is not fork-safe: a forked worker that resized the
    pool its parent had used hung for ever. Now it keeps the parent's."""
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank")
    (tmp_path / "posts.jsonl").write_text('{"text": "Kobe scores"}\n{"text": "in Boston"}\n')
    code = (
        "import cv2, numpy\n"
        "cv2.setNumThreads(2)\n"
        "cv2.resize(numpy.zeros((2000, 2000, 3), numpy.uint8), (3000, 3000))  # the pool runs\n"
        "from spacy_ita.bulk import LocalSettings, PipelineSettings, apply\n"
        f"summary = apply({str(tmp_path / 'blank')!r}, {str(tmp_path / 'posts.jsonl')!r}, "
        f"{str(tmp_path / 'out.jsonl')!r}, engine=LocalSettings(n_process=2, threads=1), "
        "batch_size=1, pipeline=PipelineSettings(add_context=False), progress=False)\n"
        "print(summary.n_written)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        output, _ = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # and the hung workers with it
        raise
    assert child.returncode == 0 and output.strip() == "2"
