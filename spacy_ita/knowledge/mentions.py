"""Knowledge about a post as entity mentions: read a language model's answer,
render it compactly, and find the mentions among the post's tokens.

Answers come in many shapes. PGIM's released ChatGPT answers read
`Named entities: 1. X (type) 2. Y (type) Reasoning: ...`; spacy-ita's own
extractor writes `X (type) ; Y (type)`. Both parse to the same mentions; the
reasoning is dropped, since a small encoder cannot pull entities out of long
free text while it can use a short list of them. The compact form is read
one mention a piece, so that names such as `NA (ORG)` or `Reasoning: The
Musical` survive a round trip.
"""
import re
import unicodedata
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

_HEADER = re.compile(r"named\s+entit(?:y|ies)\s*:", re.IGNORECASE)
_REASONING = re.compile(r"\breasoning\s*:", re.IGNORECASE)
# A typed item's name, its type, and a bracket in either, at most: bounded, the
# pattern's time grows with the text's length, not its square (a 24,000-character
# piece took 13 s).
MAX_ITEM_CHARS = 200
# `X (type)`: a bracket may stand in the mention only before the type's (`f(x) (group)`),
# and one inside the type (`Krystal (member of f(x))`). Pieces have one space between words.
_TYPED_ITEM = re.compile(
    r"((?:[^()]|\([^()]{0,%(n)d}\)(?=\s?\())" r"{1,%(n)d}?)"
    r"\s?\(((?:[^()]|\([^()]{0,%(n)d}\)){0,%(n)d})\)(?!\s?\()" % {"n": MAX_ITEM_CHARS})
_NUMBERING = re.compile(r"^\s*(?:\d+\s*[.)]|[-*•;,])\s*")
_NUMBERED = re.compile(r"^\s*\d+\s*[.)]")
_HTML_ENTITY = re.compile(r"&(#?\w{1,10});")  # `&amp;` in tweets' text: its `;` splits nothing
_POSSESSIVE = re.compile(r"['’]s$", re.IGNORECASE)
_NO_MENTION = {"", "none", "na", "n/a", "nil", "null"}
# A piece of the compact form: `X (type)` or `X`, neither with a bracket or `;` (see
# `spacy_ita.knowledge.task.parse_answer`); linear, a bracket ends the name.
_COMPACT_ITEM = re.compile(r"([^();\s](?:[^();]*[^();\s])?)(?: \(([^();]+)\))?")
# An untyped item longer than this is prose ("The sentence has no entities"), not a mention.
MAX_UNTYPED_WORDS = 6
# Longest mention, in tokens, looked for in a post.
MAX_MENTION_TOKENS = 10


@dataclass(frozen=True)
class Mention:
    """An entity the knowledge names, with its type as the source wrote it ("" if none)."""

    text: str
    type: str = ""


def parse_mentions(text: str) -> List[Mention]:
    """The mentions in one stored knowledge text, in order, without repeats: the
    compact form one mention a piece, any other text as a model's answer."""
    compact = _compact_mentions(text)
    return list(dict.fromkeys(parse_text_answer(text) if compact is None else compact))


# The compact form is one line of `X (type)` or `X` joined by ` ; `, not starting with
# a `Named entities:` header. A header, `Reasoning:` or a typed `None` in a piece is a
# name or part of one, as stored. A leading number is still taken for a list's: nothing
# tells it from one, and PGIM's `1. X (type), 2. Y (type)` gives the mention `2. Y`.
def _compact_mentions(text: str) -> Optional[List[Mention]]:
    """The mentions of text in the compact form, or None if it is not in that form."""
    if "\n" in text or _HEADER.match(text):
        return None
    items = [_COMPACT_ITEM.fullmatch(piece) for piece in text.split(" ; ")]
    if not all(items):
        return None
    mentions = []
    for item in items:
        name = _clean(item[1])
        if item[2] and name:
            mentions.append(Mention(name, " ".join(item[2].split()).lower()))
        elif not item[2] and _is_untyped_mention(name):
            mentions.append(Mention(name))
    return mentions


# The text after an optional header and before an optional `Reasoning:` is split at `;`
# (not an HTML entity's) and line breaks. In each piece, typed items `X (type)` are read
# wherever they stand; a piece without any, or a numbered item after the last, is one
# untyped mention if it is short (a long one is prose, not a mention).
def parse_text_answer(text: str) -> List[Mention]:
    """The mentions of a model's answer in text, `Named entities: 1. X (type)
    2. Y (type) Reasoning: ...` or `X (type) ; Y`, in order, repeats kept."""
    header = _HEADER.search(text)
    body = text[header.end():] if header else text
    body = _REASONING.split(body, maxsplit=1)[0]
    mentions = []
    for piece in re.split(r"[;\n]", _HTML_ENTITY.sub("&\\1\0", body)):
        piece = " ".join(piece.replace("\0", ";").split())  # one space between words
        typed = list(_TYPED_ITEM.finditer(piece)) if "(" in piece else []
        mentions += [Mention(_clean(m[1]), " ".join(m[2].split()).lower()) for m in typed]
        rest = piece[typed[-1].end():] if typed else piece
        if (not typed or _NUMBERED.match(rest)) and _is_untyped_mention(_clean(rest)):
            mentions.append(Mention(_clean(rest)))  # untyped: alone, or numbered after typed
    return [m for m in mentions if m.text.lower() not in _NO_MENTION]


def _is_untyped_mention(text: str) -> bool:
    """Whether an item without a type names something: not prose, not "none"."""
    return len(text.split()) <= MAX_UNTYPED_WORDS and text.lower() not in _NO_MENTION


def _clean(item: str) -> str:
    item = _NUMBERING.sub("", item.strip())
    return " ".join(item.strip(" \t\"'“”:;,.").split())


def render_mentions(mentions: Iterable[Mention]) -> str:
    """The compact form the tagger reads: `X (type) ; Y ; Z (type)`."""
    return " ; ".join(f"{m.text} ({m.type})" if m.type else m.text for m in mentions)


def _normalize(text: str) -> str:
    """Case-folded letters and digits only, in compatibility form without accents
    (combining marks are not alphanumeric): `#NewYorkMets`, `New York Mets` and
    `@newyorkmets` all become `newyorkmets`, `Beyoncé` (either Unicode form)
    `beyonce`, `ＮＡＳＡ` `nasa`."""
    return "".join(char for char in unicodedata.normalize("NFKD", text.casefold())
                   if char.isalnum())


def align_mentions(
    words: Sequence[str], mentions: Sequence[Mention]
) -> List[Optional[Tuple[bool, Mention]]]:
    """For each token, (whether it begins a mention, the mention) if it lies in
    a span of tokens that spells a mention, else None.

    Spans are matched on normalised text (case, spaces, `#`/`@` and punctuation
    ignored; a final possessive `'s` optional), longest first, left to right;
    they start and end on tokens with letters or digits.
    """
    index: Dict[str, Mention] = {}
    for mention in mentions:
        for key in (_normalize(mention.text), _normalize(_POSSESSIVE.sub("", mention.text))):
            if len(key) >= 2:
                index.setdefault(key, mention)
    result: List[Optional[Tuple[bool, Mention]]] = [None] * len(words)
    if not index:
        return result
    longest = max(len(key) for key in index)
    normalized = [_normalize(word) for word in words]
    start = 0
    while start < len(words):
        match = _longest_match(words, normalized, start, index, longest)
        if match is None:
            start += 1
            continue
        end, mention = match
        for i in range(start, end):
            result[i] = (i == start, mention)
        start = end
    return result


def _longest_match(
    words: Sequence[str], normalized: Sequence[str], start: int, index: Dict[str, Mention],
    longest: int,
) -> Optional[Tuple[int, Mention]]:
    """The end and mention of the longest span from `start` that spells a mention."""
    if not normalized[start]:
        return None
    best = None
    joined = ""
    for end in range(start + 1, min(len(words), start + MAX_MENTION_TOKENS) + 1):
        last = normalized[end - 1]
        if last:
            for key in (joined + last, joined + _normalize(_POSSESSIVE.sub("", words[end - 1]))):
                if key in index:
                    best = (end, index[key])
                    break
        joined += last
        if len(joined) > longest:
            break
    return best


def matched_mentions(words: Sequence[str], mentions: Sequence[Mention]) -> List[Mention]:
    """The mentions that `align_mentions` finds among the words, in their order."""
    found = {item[1] for item in align_mentions(words, mentions) if item is not None}
    return [mention for mention in mentions if mention in found]
