"""`apply`'s settings dataclasses: docs/apply.md's Python snippets call apply
as it is, a wrong setting is refused when made, and the library builds the
ita_context it adds without importing the CLI."""
import inspect
import re
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


def test_the_library_adds_ita_context_without_importing_the_cli(tmp_path):
    """bulk builds the ita_context config from spacy_ita.context.config: no
    module outside cli/ imports cli/ (issue 20)."""
    import spacy

    spacy.blank("en").to_disk(tmp_path / "blank")
    code = (
        "import sys\n"
        "from spacy_ita.bulk.annotate import PipelineSettings, PipelineSpec\n"
        f"spec = PipelineSpec({str(tmp_path / 'blank')!r}, PipelineSettings(ocr='none', "
        "tags=False))\n"
        "assert spec.load().pipe_names == ['ita_context']\n"
        "print(sorted(name for name in sys.modules if name.startswith('spacy_ita.cli')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
