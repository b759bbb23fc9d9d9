"""`spacy-ita.mentions_task.v1`: what a language model is asked about a post,
and how its answer becomes knowledge. Pure: it builds chat messages and parses
answers; the only I/O is reading the few-shot file once.

The model is asked for the post's entity mentions, each with a type from the
pipeline's labels, as JSON; the answer is stored in the compact form
`X (type) ; Y (type)` that `ita_ner` reads best (see `mentions`).
"""
import base64
import hashlib
import io
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import spacy
from spacy.util import registry

from ..corpus.readers import CorpusError, MultimodalCorpus
from ..visual_context import SURROGATE, get_visual_context
from .mentions import Mention, parse_text_answer, render_mentions

NAME = "spacy-ita.mentions_task.v1"
# Short descriptions of common NER labels; other labels need one in `labels`.
LABEL_DESCRIPTIONS = {
    "PER": "a person (real or fictional), or a person's account or name",
    "LOC": "a location: a place, city, country, region, venue or landmark",
    "ORG": "an organization: a company, team, band, party, institution or media outlet",
    "OTHER": "another named entity: an event, product, work, brand, holiday or nationality",
    "MISC": "another named entity: an event, product, work, brand, holiday or nationality",
}
DEFAULT_LABELS = ["PER", "LOC", "ORG", "OTHER"]
DEFAULT_SYSTEM_PROMPT = """\
You find the named entities that a social media post mentions. The post may \
come with a description of its image; use it to decide what an entity is, but \
list only entities written in the post itself, spelled as in the post.
{labels}
Answer with JSON only, in this form:
{"entities": [{"text": "<the entity as written in the post>", "type": "<its type>"}]}
If the post names no entity, answer {"entities": []}."""
DEFAULT_PROMPT = "Post: {text}\n{context}"
# The placeholders each template may use. They are `{name}`, not `$name`: spaCy
# doubles a `$` each time it saves and loads a config.
PLACEHOLDERS = {"system_prompt": ("labels",), "prompt": ("text", "context", "labels")}
# What the context fields are called in the prompt, in the order they are given.
CONTEXT_NAMES = (("captions", "Image caption"), ("object_tags", "Objects in the image"),
                 ("ocr_text", "Text in the image"))
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)
# Characters that would break the compact form `X (type) ; Y`.
_NOT_IN_MENTIONS = re.compile(r"[();\s]+")
_TEXT_KEYS = ("text", "mention", "name", "entity")
_TYPE_KEYS = ("type", "label", "category")
_LIST_KEYS = ("entities", "mentions", "named_entities")
# An answer that starts as JSON: an object, or a list of objects, lists or strings
# (not the `[1]` or `[Obama]` of text).
_JSON_START = re.compile(r'\{|\[\s*[\[{"\]]')
# JSON after prose: an object with a quoted key (JSON's or a Python dict's), alone or
# opening a list (not the `{post}` or `:-}` of text); a list of pairs (not the `[]` or
# `["#vote"]` of text).
_OBJECT_START = re.compile(r"""(?:\[\s*)?\{\s*["']""")
_PAIRS_START = re.compile(r"\[\s*\[")

Messages = List[Dict[str, Any]]
Example = Tuple[str, Dict[str, List[str]], str]  # text, image context, answer


class AnswerError(ValueError):
    """An answer that cannot become knowledge: empty, too long, or not a list of entities."""


def check_template(setting: str, template: str) -> None:
    """Fail on a `{name}` placeholder that `setting` does not know, say a typo."""
    unknown = sorted(set(_PLACEHOLDER.findall(template)) - set(PLACEHOLDERS[setting]))
    if unknown:
        allowed = ", ".join("{%s}" % name for name in PLACEHOLDERS[setting])
        raise ValueError(f"{NAME}: {setting} has an unknown placeholder {{{unknown[0]}}}; "
                         f"it may use {allowed}")


def fill_template(template: str, values: Dict[str, str]) -> str:
    """`template` with each known `{name}` replaced; other braces (JSON) stay."""
    return _PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def label_table(labels: Union[Sequence[str], Dict[str, str]]) -> Dict[str, str]:
    """Labels with their descriptions ("" when none is known)."""
    if isinstance(labels, dict):
        return {str(label): str(text) for label, text in labels.items()}
    return {label: LABEL_DESCRIPTIONS.get(label, "") for label in labels}


def describe_labels(labels: Dict[str, str]) -> str:
    """The `{labels}` part of a prompt."""
    if not labels:
        return "Give each entity a short type, such as person, location or organization."
    lines = [f"- {label}: {text}" if text else f"- {label}" for label, text in labels.items()]
    return "Give each entity one of these types:\n" + "\n".join(lines)


def describe_context(context: Optional[Dict[str, List[str]]]) -> str:
    """The `{context}` part of a prompt: what the image gave, one field a line."""
    lines = []
    for field, name in CONTEXT_NAMES:
        items = [text.strip() for text in (context or {}).get(field, []) if text.strip()]
        if items:
            lines.append(f"{name}: {' | '.join(items)}")
    return "\n".join(lines)


def entities_json(mentions: Sequence[Mention]) -> str:
    """An answer in the form the default prompt asks for."""
    items = [{"text": mention.text, "type": mention.type} for mention in mentions]
    return json.dumps({"entities": items}, ensure_ascii=False)


def parse_answer(answer: str, labels: Sequence[str] = (), text_form: bool = True) -> List[Mention]:
    """The mentions in a model's answer: JSON (bare, in a code fence, after some
    prose or before some; `{"entities": [...]}` or a bare list of `{"text", "type"}`
    objects, `[text, type]` pairs or `"X (type)"` strings), else, with `text_form`,
    the text form (`parse_text_answer`). A type matching a label but for case is
    spelled as the label; texts and types are made `compact_text`. Raises
    AnswerError when JSON that starts the answer, or an object after prose, is not
    entities, or when the answer is the text form and `text_form` is false."""
    fenced = _FENCE.search(answer)
    text = (fenced.group(1) if fenced else answer).strip()
    mentions = _json_answer(text)
    if mentions is None:
        if not text_form:
            raise AnswerError("not JSON, and a text form cut short may miss entities")
        mentions = parse_text_answer(text)
    by_lower = {label.lower(): label for label in labels}
    cleaned = [Mention(compact_text(m.text), by_lower.get(m.type.lower(), compact_text(m.type)))
               for m in mentions]
    return list(dict.fromkeys(m for m in cleaned if m.text))


def compact_text(text: str) -> str:
    """`text` as it can stand in the compact form: no brackets, `;` or lone surrogates."""
    return SURROGATE.sub("\ufffd", _NOT_IN_MENTIONS.sub(" ", text)).strip()


def _json_answer(text: str) -> Optional[List[Mention]]:
    """The mentions of the JSON in an answer, or None if it has none. JSON that starts
    the answer, or an object after prose, must be entities; a list of pairs after
    prose is taken only if it is entities, since text may have one (`[[1]]`)."""
    if _JSON_START.match(text):
        return _json_mentions(_decode(text, 0))
    found = _OBJECT_START.search(text)
    pairs = _PAIRS_START.search(text)
    if pairs and (found is None or pairs.start() < found.start()):
        try:
            return _json_mentions(_decode(text, pairs.start()))
        except AnswerError:
            pass  # brackets of the text
    return None if found is None else _json_mentions(_decode(text, found.start()))


def _decode(text: str, start: int) -> Any:
    """The JSON value at `start` in `text`; what follows it (a remark) is left out."""
    try:
        return json.JSONDecoder().raw_decode(text, start)[0]
    except (ValueError, RecursionError) as err:  # also too deep, or over the int digit limit
        raise AnswerError(f"invalid JSON: {err}") from None


def _json_mentions(data: Any) -> List[Mention]:
    """The mentions in parsed JSON, in any of the shapes `parse_answer` accepts."""
    if isinstance(data, dict):
        found = [data[key] for key in _LIST_KEYS if key in data]
        if not found:
            raise AnswerError(f"expected {{\"entities\": [...]}}, got keys {sorted(data)[:5]}")
        data = found[0]
    if not isinstance(data, list):
        raise AnswerError(f"expected a list of entities, got {type(data).__name__}")
    mentions = []
    for item in data:
        if isinstance(item, str):
            mentions += parse_text_answer(item)
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            mentions.append(Mention(*item))
        elif isinstance(item, dict):
            text = next((item[key] for key in _TEXT_KEYS if isinstance(item.get(key), str)), None)
            kind = next((item[key] for key in _TYPE_KEYS if isinstance(item.get(key), str)), "")
            if text is None:
                raise AnswerError(f"entity without a text: {json.dumps(item)}")
            mentions.append(Mention(text, kind))
        else:
            raise AnswerError(f"unexpected entity {json.dumps(item)}")
    return mentions


def image_data_url(image: Any) -> str:
    """A PIL image as a base64 JPEG data URL."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def load_examples(path: str, n: int, labels: Sequence[str]) -> List[Example]:
    """Up to n (text, context, answer) few-shot examples from a .spacy file:
    posts with gold entities, first one for each label in turn, then the next
    posts in file order; the answer lists the gold entities. A file that
    cannot be read is a CorpusError naming the setting, the file and the doc."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{NAME}: examples_path {path} does not exist")
    try:
        docs = [doc for doc in MultimodalCorpus(path).read_docs(spacy.blank("xx")) if doc.ents]
    except CorpusError as err:
        raise CorpusError(f"{NAME}: examples_path: {err}") from None  # err names the file
    chosen: List[int] = []
    for label in labels:
        first = next((i for i, doc in enumerate(docs) if i not in chosen
                      and any(ent.label_ == label for ent in doc.ents)), None)
        if first is not None and len(chosen) < n:
            chosen.append(first)
    chosen += [i for i in range(len(docs)) if i not in chosen][: n - len(chosen)]
    examples = []
    for i in sorted(chosen):
        doc = docs[i]
        context = get_visual_context(doc)
        found = {} if context is None else context.to_dict()
        answer = entities_json([Mention(ent.text, ent.label_) for ent in doc.ents])
        examples.append((doc.text, found, answer))
    return examples


class MentionsTask:
    """Asks for a post's entity mentions with types (system prompt, few-shot
    turns, the post with what its image gave and, with `send_image`, the image)
    and turns the answer into one compact knowledge text."""

    def __init__(self, *, labels: Union[Sequence[str], Dict[str, str]], system_prompt: str,
                 prompt: str, examples_path: Optional[str], n_examples: int, send_image: bool,
                 max_answer_chars: int):
        for setting, value, low in (("n_examples", n_examples, 0),
                                    ("max_answer_chars", max_answer_chars, 1)):
            if value < low:
                raise ValueError(f"{NAME}: {setting} must be at least {low}, got {value}")
        check_template("system_prompt", system_prompt)
        check_template("prompt", prompt)
        self.labels = label_table(labels)
        self.system_prompt = system_prompt
        self.prompt = prompt
        self.send_image = send_image
        self.max_answer_chars = max_answer_chars
        self.examples = ([] if examples_path is None or n_examples == 0
                         else load_examples(examples_path, n_examples, list(self.labels)))
        # Hashed once: settings() is part of the cache key read for every post.
        examples_json = json.dumps(self.examples, sort_keys=True, ensure_ascii=False)
        self.examples_sha256 = hashlib.sha256(examples_json.encode("utf-8")).hexdigest()

    def settings(self) -> Dict[str, Any]:
        """What changes the answer, for the cache key; the examples as a hash."""
        return {"send_image": self.send_image, "labels": self.labels,
                "system_prompt": self.system_prompt, "prompt": self.prompt,
                "examples": self.examples_sha256}

    def messages(self, text: str, context: Dict[str, List[str]], image: Any = None) -> Messages:
        """The chat messages for one post: the system prompt, the few-shot
        examples as user/assistant turns, and the post (with its image)."""
        labels = describe_labels(self.labels)

        def user(post: str, found: Optional[Dict[str, List[str]]]) -> str:
            values = {"text": post, "context": describe_context(found), "labels": labels}
            return fill_template(self.prompt, values).strip()

        messages: Messages = [
            {"role": "system", "content": fill_template(self.system_prompt, {"labels": labels})}]
        for example_text, example_context, answer in self.examples:
            messages += [{"role": "user", "content": user(example_text, example_context)},
                         {"role": "assistant", "content": answer}]
        content: Any = user(text, context)
        if self.send_image and image is not None:
            content = [{"type": "text", "text": content},
                       {"type": "image_url", "image_url": {"url": image_data_url(image)}}]
        messages.append({"role": "user", "content": content})
        return messages

    def parse(self, answer: Any, finish_reason: Optional[str] = None) -> List[str]:
        """The knowledge texts for one answer ([] when it names no entity);
        AnswerError says why an answer is unusable, quoting it uncut: the model's
        `scrub` masks an echoed key before it cuts the message. An answer cut at
        max_tokens (`finish_reason` "length") counts only as whole JSON."""
        if not isinstance(answer, str) or not answer.strip():
            raise AnswerError("empty answer")
        if len(answer) > self.max_answer_chars:
            raise AnswerError(f"answer of {len(answer)} characters is over "
                              f"max_answer_chars ({self.max_answer_chars})")
        try:
            mentions = parse_answer(answer, list(self.labels), text_form=finish_reason != "length")
        except AnswerError as err:
            cut = " (cut at max_tokens)" if finish_reason == "length" else ""
            raise AnswerError(f"malformed answer{cut}: {err}: {answer!r}") from None
        return [render_mentions(mentions)] if mentions else []


@registry.misc(NAME)
def make_mentions_task(
    labels: Union[List[str], Dict[str, str]] = DEFAULT_LABELS,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    prompt: str = DEFAULT_PROMPT,
    examples_path: Optional[str] = None,
    n_examples: int = 4,
    send_image: bool = False,
    max_answer_chars: int = 4000,
) -> MentionsTask:
    """The entity-mentions task: `labels` (names, or names with descriptions)
    are the types to ask for; `examples_path` a .spacy file whose first
    `n_examples` posts with entities serve as few-shot examples; `send_image`
    sends the image along (vision models); answers longer than
    `max_answer_chars` are refused."""
    return MentionsTask(labels=labels, system_prompt=system_prompt, prompt=prompt,
                        examples_path=examples_path, n_examples=n_examples,
                        send_image=send_image, max_answer_chars=max_answer_chars)
