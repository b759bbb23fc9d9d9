"""Configs saved when knowledge was the `knowledge` slot of `ita_context`
(`[components.ita_context.knowledge]` with `spacy-ita.llm_knowledge.v1`).

Such a config fails to load with a message holding the blocks that replace
the slot, filled with its settings: moving them is one edit of config.cfg,
whereas loading them silently would keep a second way to configure knowledge
and the image component's special cases alive. A slot set to null (every
pipeline saved without knowledge) loads as before.
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from confection import Config

from ..context.registry import extractors
from .client import ENV_NAME
from .task import DEFAULT_LABELS, DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT

LEGACY_NAME = "spacy-ita.llm_knowledge.v1"
# Which new block each setting of the old slot belongs to.
TASK_SETTINGS = ("labels", "system_prompt", "prompt", "examples_path", "n_examples",
                 "send_image", "max_answer_chars")
# The user:key@ of a URL (its scheme optional): everything up to the authority's last `@`.
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^/?#]*@", re.IGNORECASE)
# Each value of a query string (`key=…`), or a parameter without `=` as a whole.
_QUERY_VALUE = re.compile(r"(?<=[?&])(?:([^=&#]*=)[^&#]*|[^=&#]+)")


@dataclass
class KnowledgeSlot:
    """The settings of an old `knowledge` slot, kept only to say where they go."""

    settings: Dict[str, Any]


@extractors.register(LEGACY_NAME)
def make_knowledge_slot(
    model: str,
    base_url: str,
    api_key_env: Optional[str] = None,
    send_image: bool = False,
    labels: Union[List[str], Dict[str, str]] = DEFAULT_LABELS,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    prompt: str = DEFAULT_PROMPT,
    examples_path: Optional[str] = None,
    n_examples: int = 4,
    json_mode: bool = True,
    temperature: float = 0.0,
    max_tokens: Optional[int] = 512,
    max_answer_chars: int = 4000,
    max_answer_bytes: int = 1 << 20,
    max_concurrency: int = 8,
    timeout: float = 60.0,
    max_retries: int = 4,
    backoff: float = 1.0,
    max_calls: Optional[int] = None,
) -> KnowledgeSlot:
    """The old knowledge extractor's settings (same names and defaults), for
    `moved_message`; it makes no client and never runs."""
    return KnowledgeSlot(dict(locals()))


def _masked(url: str) -> str:
    """The URL with its user:key@ and its query string's values as ***: a key
    in the URL must not reach a log (the new client refuses it, saying where it goes)."""
    head, question, query = _USERINFO.sub(r"\1***@", url).partition("?")
    return head + _QUERY_VALUE.sub(r"\1***", question + query)


def moved_message(slot: Any, component: str, context_settings: Dict[str, Any]) -> str:
    """How to move an old `knowledge` slot of the ita_context `component` to
    an ita_knowledge component: the config blocks, filled in when the slot
    was `spacy-ita.llm_knowledge.v1`."""
    intro = (f"{component}: the `knowledge` slot is gone; knowledge from a language model "
             f"is now its own component, ita_knowledge, placed after {component}. In "
             f"config.cfg, delete [components.{component}.knowledge], add \"ita_knowledge\" "
             f"after \"{component}\" in [nlp] pipeline, and add")
    if not isinstance(slot, KnowledgeSlot):
        return (f"{intro} a [components.ita_knowledge] block (factory = \"ita_knowledge\") "
                "with a [components.ita_knowledge.task] and a [components.ita_knowledge.model]; "
                "see docs/knowledge.md")
    task = {key: value for key, value in slot.settings.items() if key in TASK_SETTINGS}
    model = {key: value for key, value in slot.settings.items() if key not in TASK_SETTINGS}
    model["base_url"] = _masked(model["base_url"])
    if model["api_key_env"] is not None and not ENV_NAME.match(model["api_key_env"]):
        model["api_key_env"] = "***"  # a key pasted in place of the variable's name
    block = {"factory": "ita_knowledge", "on_error": context_settings["on_error"],
             "cache_path": context_settings["cache_path"],
             "max_side": context_settings["max_side"],
             "task": {"@misc": "spacy-ita.mentions_task.v1", **task},
             "model": {"@misc": "spacy-ita.openai_compatible.v1", **model}}
    text = Config({"components": {"ita_knowledge": block}}).to_str()
    return f"{intro} (answers cached before still answer):\n\n{text}"
