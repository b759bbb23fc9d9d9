"""Configs and caches from when knowledge was the `knowledge` slot of
`ita_context` (`spacy-ita.llm_knowledge.v1`): such a config fails with the
blocks that replace the slot, and those blocks, pasted in, ask the same
question; answers cached then still answer, without a call."""
import hashlib
import json

import pytest
import spacy
from confection import Config

from fake_llm import KEY, KEY_ENV, MODEL, FakeLLM, Reply, entities, post_text

import spacy_ita  # noqa: F401  (Doc extensions)
from spacy_ita.context import component as _component  # noqa: F401  (the ita_context factory)
from spacy_ita.context import make_doc
from spacy_ita.context.cache import ContextCache
from spacy_ita.knowledge import component as _knowledge  # noqa: F401  (the ita_knowledge factory)
from spacy_ita.knowledge.task import DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT

OLD_CONFIG = """
[nlp]
lang = "en"
pipeline = ["ita_context"]

[components]

[components.ita_context]
factory = "ita_context"
object_tags = null
captions = null
ocr_text = null
cache_path = null
on_error = "ignore"

[components.ita_context.knowledge]
@spacy_ita_extractors = "spacy-ita.llm_knowledge.v1"
base_url = "{url}"
model = "{model}"
api_key_env = "{key_env}"
labels = ["PER","TEAM"]
prompt = "Tweet: {{text}}"
max_retries = 0
"""


def last_word_is_a_team(request: dict) -> Reply:
    return Reply(entities((post_text(request).split()[-1], "team")))


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def test_an_old_knowledge_slot_fails_with_the_blocks_that_replace_it():
    with FakeLLM(last_word_is_a_team) as server:
        old = Config().from_str(OLD_CONFIG.format(url=server.url, model=MODEL, key_env=KEY_ENV))
        with pytest.raises(ValueError) as excinfo:
            spacy.util.load_model_from_config(old, auto_fill=True)
        message = str(excinfo.value)
        assert "delete [components.ita_context.knowledge]" in message
        assert 'add "ita_knowledge" after "ita_context" in [nlp] pipeline' in message
        blocks = Config().from_str(message.split("\n\n", 1)[1])
        assert blocks["components"]["ita_knowledge"]["model"]["max_retries"] == 0
        del old["components"]["ita_context"]["knowledge"]
        old["nlp"]["pipeline"].append("ita_knowledge")
        nlp = spacy.util.load_model_from_config(old.merge(blocks), auto_fill=True)
        doc = nlp(make_doc(nlp, "Go Lakers"))
        assert server.requests[0]["messages"][-1]["content"] == "Tweet: Go Lakers"
        assert "- TEAM\n" in server.requests[0]["messages"][0]["content"]
    assert doc._.visual_context.knowledge == ["Lakers (TEAM)"]
    assert nlp.pipe_names == ["ita_context", "ita_knowledge"]


@pytest.mark.parametrize("url, masked", [
    ("https://bob:sk-secret@llm.example/v1", "https://***@llm.example/v1"),
    # a key in the query string was printed as it was
    ("https://llm.example/v1?key=sk-secret&bob", "https://llm.example/v1?key=***&***"),
])
def test_a_key_in_the_old_base_url_is_masked_in_the_message(url, masked):
    """The message reaches logs; the new client refuses credentials in the URL."""
    old = Config().from_str(OLD_CONFIG.format(url=url, model=MODEL, key_env=KEY_ENV))
    with pytest.raises(ValueError) as excinfo:
        spacy.util.load_model_from_config(old, auto_fill=True)
    assert "sk-secret" not in str(excinfo.value) and "bob" not in str(excinfo.value)
    blocks = Config().from_str(str(excinfo.value).split("\n\n", 1)[1])
    model = blocks["components"]["ita_knowledge"]["model"]
    assert model["base_url"] == masked


def test_a_key_in_the_old_api_key_env_is_masked_in_the_message():
    """A key pasted where the variable's NAME goes was quoted in the message."""
    old = Config().from_str(OLD_CONFIG.format(url="https://llm.example/v1", model=MODEL,
                                              key_env="sk-secret-123"))
    with pytest.raises(ValueError) as excinfo:
        spacy.util.load_model_from_config(old, auto_fill=True)
    assert "sk-secret" not in str(excinfo.value)
    blocks = Config().from_str(str(excinfo.value).split("\n\n", 1)[1])
    assert blocks["components"]["ita_knowledge"]["model"]["api_key_env"] == "***"


def test_a_saved_pipeline_without_knowledge_still_loads(tmp_path):
    """Every ita_context saved before has `knowledge = null`."""
    config = Config().from_str(OLD_CONFIG.format(url="http://x", model=MODEL, key_env=KEY_ENV))
    config["components"]["ita_context"]["knowledge"] = None
    nlp = spacy.util.load_model_from_config(config, auto_fill=True)
    assert nlp.pipe_names == ["ita_context"]
    assert nlp.get_pipe("ita_context").extractors == {}
    nlp.to_disk(tmp_path / "pipeline")
    assert spacy.load(tmp_path / "pipeline").pipe_names == ["ita_context"]


def old_cache_key(base_url: str) -> str:
    """The extractor key the `knowledge` slot filed answers under, written out
    as it was (default settings, no examples, ita_context's max_side 1600)."""
    settings = {"base_url": base_url, "model": MODEL, "send_image": False,
                "labels": {"PER": "a person (real or fictional), or a person's account or name",
                           "LOC": "a location: a place, city, country, region, venue or landmark",
                           "ORG": "an organization: a company, team, band, party, institution "
                                  "or media outlet",
                           "OTHER": "another named entity: an event, product, work, brand, "
                                    "holiday or nationality"},
                "system_prompt": DEFAULT_SYSTEM_PROMPT, "prompt": DEFAULT_PROMPT,
                "json_mode": True, "examples": hashlib.sha256(b"[]").hexdigest(),
                "temperature": 0.0, "max_tokens": 512}
    return f"spacy-ita.llm_knowledge.v1 {json.dumps(settings, sort_keys=True)} max_side=1600"


def test_answers_cached_by_the_old_slot_still_answer(tmp_path):
    cache_path = tmp_path / "contexts.sqlite"
    text = "Kobe wins"
    post = json.dumps([None, text, {"captions": [], "object_tags": [], "ocr_text": []}],
                      sort_keys=True)
    with FakeLLM(last_word_is_a_team) as server:
        ContextCache(str(cache_path)).put(hashlib.sha256(post.encode("utf-8")).hexdigest(),
                                          old_cache_key(server.url),
                                          {"knowledge": ["Kobe (PER)"]})
        nlp = spacy.blank("en")
        nlp.add_pipe("ita_knowledge", config={"cache_path": str(cache_path), "model": {
            "@misc": "spacy-ita.openai_compatible.v1", "base_url": server.url, "model": MODEL,
            "api_key_env": KEY_ENV}})
        docs = list(nlp.pipe([make_doc(nlp, text), make_doc(nlp, "Hello Paris")]))
        assert [post_text(request) for request in server.requests] == ["Hello Paris"]
    assert [doc._.visual_context.knowledge for doc in docs] == [["Kobe (PER)"], ["Paris (team)"]]
