"""The configuration snippets of docs/context.md build the pipeline they
describe: a slot or setting renamed in the code fails here, not for a reader."""
import re
from pathlib import Path

import pytest
import spacy
from thinc.api import Config

CONTEXT_DOC = Path(__file__).resolve().parents[1] / "docs" / "context.md"
SNIPPETS = re.findall(r"```ini\n(.*?)```", CONTEXT_DOC.read_text(encoding="utf8"), re.S)
PIPELINE = '[nlp]\nlang = "en"\npipeline = ["ita_context"]\n\n[components]\n\n'


def test_the_doc_has_its_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: s.splitlines()[0])
def test_a_config_snippet_of_context_md_builds_its_ita_context(snippet):
    if not snippet.startswith("[components.ita_context]\n"):
        snippet = '[components.ita_context]\nfactory = "ita_context"\n\n' + snippet
    config = Config().from_str(PIPELINE + snippet)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    extractors = nlp.get_pipe("ita_context").extractors
    for slot, section in config["components"]["ita_context"].items():
        if isinstance(section, dict):
            assert extractors[slot].name == section["@spacy_ita_extractors"], slot
