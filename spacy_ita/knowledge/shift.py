"""Knowledge rewritten as another language model's might be: the free-form types
of PGIM's answers renamed to the label set (as the project's LM extractor
writes them, `X (PER) ; Y (LOC)`), a share of the mentions dropped, spurious
mentions added (spans of the post that touch no gold entity, typed at random).

`rewrite_knowledge` applies one such shift to a set of examples (the benchmark
of how much of the cross view's gain survives it); `augment` gives each of
`CONDITIONS` to a random group of training posts, so that a model trained on
them does not depend on one LM's way of writing (scripts/augment_knowledge.py
of the project).

The shares are of the mentions that align with the post's tokens (the only ones
`ita_ner` reads: it drops knowledge that names nothing in the post), counted
over all the examples rewritten together, not per post. Each spurious mention goes to the post
of a randomly drawn mention, so posts with more mentions get more and posts
whose knowledge names nothing in the post get none (they stay text-only, as
they were).
"""
import random
import re
from typing import Dict, List, Optional, Sequence, Set, Tuple

from spacy.tokens import Doc
from spacy.training import Example

from ..visual_context import get_visual_context
from .mentions import Mention, align_mentions, matched_mentions, parse_mentions, render_mentions
from .task import DEFAULT_LABELS, compact_text, entities_json, parse_answer

# Words of a free-form type that name each label, after the extractor's label
# descriptions (spacy_ita.knowledge.task.LABEL_DESCRIPTIONS) plus common synonyms.
TYPE_WORDS = {
    "PER": {"person", "people", "individual", "player", "politician", "artist", "author", "athlete",
            "actor", "actress", "character", "photographer", "celebrity", "singer", "rapper",
            "musician", "journalist", "figure", "president", "comedian", "director", "writer",
            "coach", "host", "name", "human", "reporter", "leader", "model", "dj", "star"},
    "LOC": {"location", "place", "city", "country", "region", "state", "venue", "landmark",
            "street", "geographic", "geographical", "area", "continent", "island", "park",
            "building", "town", "neighborhood", "stadium", "airport", "province", "county",
            "village", "road", "river", "mountain", "beach", "arena", "address"},
    "ORG": {"organization", "organisation", "company", "team", "band", "party", "institution",
            "outlet", "agency", "club", "university", "school", "network", "channel", "group",
            "business", "corporation", "government", "league", "station", "newspaper", "website",
            "restaurant", "store", "shop", "magazine", "charity", "department", "firm"},
    "OTHER": {"event", "product", "work", "brand", "holiday", "nationality", "movie", "film",
              "show", "book", "song", "album", "game", "award", "festival", "publication",
              "hashtag", "competition", "tournament", "series", "language", "religion"},
}
# Type words that say "an account": a person's unless another word says otherwise
# ("handle/organization" is ORG, "person/handle" and "handle" are PER).
ACCOUNT_WORDS = {"handle", "account", "username", "user", "twitter"}
SHARE = 0.3
CONDITIONS = {  # name: (share of mentions dropped, spurious mentions per mention), None: unchanged
    "as trained": None,
    "types renamed": (0.0, 0.0),
    "renamed, 30 % dropped": (SHARE, 0.0),
    "renamed, 30 % spurious added": (0.0, SHARE),
    "renamed, dropped and spurious": (SHARE, SHARE),
}
MAX_SPURIOUS_TOKENS = 3
_WORD = re.compile(r"[a-z]+")
_URL = re.compile(r"https?:|www\.", re.IGNORECASE)
_ALL_TYPE_WORDS = set().union(*TYPE_WORDS.values())


def label_for_type(kind: str, labels: Sequence[str] = DEFAULT_LABELS) -> str:
    """The label a free-form type maps to. OTHER is the catch-all, so a word that
    names another label wins over it in any `/`-part ("brand/company" is ORG),
    the first such part deciding; else a word of OTHER's; else an account is PER
    ("handle/brand" is OTHER, "handle" PER); else OTHER (dates, topics: an LM
    asked for the labels would have to put them somewhere)."""
    catch_all = labels[-1]
    parts = [{word[:-1] if word.endswith("s") and word[:-1] in _ALL_TYPE_WORDS else word
              for word in _WORD.findall(part)} for part in kind.lower().split("/")]
    for words in parts:
        for label in labels:
            if label != catch_all and words & TYPE_WORDS.get(label, set()):
                return label
    if any(words & TYPE_WORDS.get(catch_all, set()) for words in parts):
        return catch_all
    if any(words & ACCOUNT_WORDS for words in parts) and "PER" in labels:
        return "PER"
    return catch_all


def rename_types(mentions: Sequence[Mention]) -> List[Mention]:
    """The mentions typed with the label set, as the LM extractor would store its
    JSON answer (`parse_answer`: cleaned texts, repeats merged)."""
    answer = entities_json([Mention(m.text, label_for_type(m.type)) for m in mentions])
    return parse_answer(answer, DEFAULT_LABELS)


def knowledge_mentions(example: Example) -> Optional[List[Mention]]:
    """The mentions of a post's knowledge, without repeats (as `ita_ner` reads
    them), or None when the post has no knowledge."""
    context = get_visual_context(example.predicted)
    if context is None or not context.knowledge:
        return None
    return list(dict.fromkeys(m for item in context.knowledge for m in parse_mentions(item)))


def aligned_tokens(words: Sequence[str], mentions: Sequence[Mention]) -> Set[int]:
    """The indices of the tokens that some mention spells."""
    return {i for i, item in enumerate(align_mentions(words, mentions)) if item is not None}


def spurious_mention(example: Example, blocked: Set[int], rng: random.Random) -> Optional[Mention]:
    """A random span of the post's words (at most MAX_SPURIOUS_TOKENS, each with
    a letter or digit, no URL), as the extractor would store it, that spells no
    token of `blocked` (gold entities, known mentions) wherever it aligns, with
    a random label; None if the post has no such span."""
    words = [token.text for token in example.predicted]
    wordlike = [any(c.isalnum() for c in word) and not _URL.match(word) for word in words]
    candidates = []
    for start in range(len(words)):
        for end in range(start + 1, min(len(words), start + MAX_SPURIOUS_TOKENS) + 1):
            if not wordlike[end - 1]:
                break
            mention = Mention(compact_text(example.predicted[start:end].text))  # `(via` is `via`
            covered = aligned_tokens(words, [mention])
            if covered and not covered & blocked:
                candidates.append(mention)
    if not candidates:
        return None
    return Mention(rng.choice(candidates).text, rng.choice(DEFAULT_LABELS))


def rewrite_knowledge(
    examples: Sequence[Example], drop: float, spurious: float, seed: int = 0
) -> Tuple[List[Example], Dict[str, int]]:
    """The examples with each post's knowledge renamed to the label set, `drop`
    of the mentions found in posts removed and `spurious` times as many
    spurious mentions added (see the module's docstring), with counts."""
    renamed = [None if found is None else rename_types(found)
               for found in map(knowledge_mentions, examples)]
    words = [[token.text for token in eg.predicted] for eg in examples]
    found = [[] if mentions is None else matched_mentions(words[i], mentions)
             for i, mentions in enumerate(renamed)]
    pool = [(i, mention) for i, mentions in enumerate(found) for mention in mentions]
    dropped = set(random.Random(f"{seed}-drop").sample(pool, round(drop * len(pool))))
    added: Dict[int, List[Mention]] = {}
    n_spurious, n_added = round(spurious * len(pool)), 0
    rng = random.Random(f"{seed}-spurious")
    for i, _ in rng.sample(pool, len(pool)):
        if n_added == n_spurious:
            break
        gold = {token.i for ent in examples[i].reference.ents for token in ent}
        blocked = gold | aligned_tokens(words[i], renamed[i] + added.get(i, []))
        extra = spurious_mention(examples[i], blocked, rng)
        if extra is not None:
            added.setdefault(i, []).append(extra)
            n_added += 1
    rewritten = []
    for i, eg in enumerate(examples):
        doc = eg.predicted.copy()
        if renamed[i] is not None:
            kept = [m for m in renamed[i] if (i, m) not in dropped] + added.get(i, [])
            context = get_visual_context(doc)  # a copy where the doc held a dict
            context.knowledge = [render_mentions(kept)] if kept else []
            doc._.visual_context = context
        rewritten.append(Example(doc, eg.reference))
    counts = {"mentions_in_posts": len(pool), "dropped": len(dropped),
              "spurious_added": n_added}
    return rewritten, counts


def augment(docs: Sequence[Doc], seed: int = 0) -> Tuple[List[Doc], Dict[str, Dict[str, int]]]:
    """The docs (with gold entities) split at random into as many equal groups as
    there are `CONDITIONS`, each group's knowledge rewritten by its condition;
    with counts per condition. Docs without knowledge pass unchanged."""
    order = list(range(len(docs)))
    random.Random(f"{seed}-groups").shuffle(order)
    augmented, counts = list(docs), {}
    for g, (name, shift) in enumerate(CONDITIONS.items()):
        group = order[g::len(CONDITIONS)]
        counts[name] = {"posts": len(group)}
        if shift is None:
            continue
        examples = [Example(docs[i], docs[i]) for i in group]  # rewrite_knowledge copies
        rewritten, shift_counts = rewrite_knowledge(examples, *shift, seed)
        counts[name].update(shift_counts)
        for i, example in zip(group, rewritten):
            augmented[i] = example.predicted
    return augmented, counts
