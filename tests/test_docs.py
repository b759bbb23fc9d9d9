"""The configuration snippets of docs/context.md and docs/knowledge.md build
the pipeline they describe: a slot or setting renamed in the code fails here,
not for a reader."""
import re
from pathlib import Path

import pytest
import spacy
from thinc.api import Config

DOCS = Path(__file__).resolve().parents[1] / "docs"


def ini_snippets(doc: str):
    return re.findall(r"```ini\n(.*?)```", (DOCS / doc).read_text(encoding="utf8"), re.S)


SNIPPETS = ini_snippets("context.md")
KNOWLEDGE_SNIPPETS = [s for s in ini_snippets("knowledge.md") if "[components.ita_knowledge]" in s]
PIPELINE = '[nlp]\nlang = "en"\npipeline = ["ita_context"]\n\n[components]\n\n'


def test_the_docs_have_their_snippets():
    assert len(SNIPPETS) >= 1 and len(KNOWLEDGE_SNIPPETS) >= 1


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


@pytest.mark.parametrize("snippet", KNOWLEDGE_SNIPPETS, ids=lambda s: s.splitlines()[0])
def test_a_config_snippet_of_knowledge_md_builds_its_ita_knowledge(snippet):
    if "[components]\n" not in snippet:
        snippet = "[components]\n\n" + snippet
    config = Config().from_str(snippet, interpolate=False)
    sections = {"components": {"ita_knowledge": config["components"]["ita_knowledge"]},
                "nlp": {"lang": "en", "pipeline": ["ita_knowledge"]}}
    nlp = spacy.util.load_model_from_config(Config(sections), auto_fill=True, validate=True)
    knowledge = nlp.get_pipe("ita_knowledge")
    section = config["components"]["ita_knowledge"]
    assert knowledge.model.name == section["model"]["@misc"]
    assert knowledge.on_error == section["on_error"]
