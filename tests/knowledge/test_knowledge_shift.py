"""spacy_ita.knowledge.shift: types renamed to the label set, mentions dropped,
spurious mentions that touch no gold entity."""
import random

import pytest
import spacy
from spacy.tokens import Doc, Span
from spacy.training import Example

from spacy_ita.knowledge import shift
from spacy_ita.knowledge.mentions import Mention, align_mentions, parse_mentions
from spacy_ita.visual_context import VisualContext

PGIM = ("Named entities:1. Kawhi Leonard (person/player)2. Raptors (sports team)"
        "3. Toronto (city)4. NBA Finals (event)Reasoning:The post is about basketball.")
WORDS = "Kawhi Leonard and the Raptors win the NBA Finals in Toronto tonight at home".split()
GOLD = [(0, 2, "PER"), (4, 5, "ORG"), (7, 9, "OTHER"), (10, 11, "LOC")]


def make_examples(n_posts: int):
    """`n_posts` copies of one post with gold entities and PGIM's knowledge, and
    one post without knowledge."""
    vocab = spacy.blank("en").vocab
    examples = []
    for i in range(n_posts + 1):
        predicted = Doc(vocab, words=WORDS)
        reference = Doc(vocab, words=WORDS)
        reference.ents = [Span(reference, start, end, label) for start, end, label in GOLD]
        if i < n_posts:
            predicted._.visual_context = VisualContext(knowledge=[PGIM])
        examples.append(Example(predicted, reference))
    return examples


def knowledge_of(example):
    """The mentions of a post's knowledge as written (parse_mentions lower-cases types)."""
    context = example.predicted._.visual_context
    if context is None:
        return None
    return [Mention(m.text, m.type.upper()) for m in parse_mentions(" ".join(context.knowledge))]


@pytest.mark.parametrize("kind, label", [
    ("person/handle", "PER"), ("handle", "PER"), ("historical figure", "PER"),
    ("sports team", "ORG"), ("brand/company", "ORG"), ("handle/organization", "ORG"),
    ("geographic location", "LOC"), ("city/location", "LOC"),
    ("event", "OTHER"), ("handle/brand", "OTHER"), ("year", "OTHER"), ("", "OTHER"),
])
def test_free_form_types_map_to_the_label_set(kind, label):
    assert shift.label_for_type(kind) == label


def test_renaming_keeps_the_mentions_and_writes_the_extractors_form():
    examples = make_examples(2)
    rewritten, counts = shift.rewrite_knowledge(examples, 0.0, 0.0)
    expected = [Mention("Kawhi Leonard", "PER"), Mention("Raptors", "ORG"),
                Mention("Toronto", "LOC"), Mention("NBA Finals", "OTHER")]
    assert knowledge_of(rewritten[0]) == expected
    assert rewritten[0].predicted._.visual_context.knowledge == [
        "Kawhi Leonard (PER) ; Raptors (ORG) ; Toronto (LOC) ; NBA Finals (OTHER)"]
    assert rewritten[-1].predicted._.visual_context is None
    assert counts == {"mentions_in_posts": 8, "dropped": 0, "spurious_added": 0}
    assert examples[0].predicted._.visual_context.knowledge == [PGIM]  # the input is left alone


def test_a_context_held_as_a_dict_is_rewritten_too():
    """Doc._.visual_context may be a plain dict; the rewrite must reach the doc."""
    examples = make_examples(1)
    examples[0].predicted._.visual_context = {"knowledge": [PGIM]}
    rewritten, _ = shift.rewrite_knowledge(examples, 0.0, 0.0)
    assert knowledge_of(rewritten[0])[0] == Mention("Kawhi Leonard", "PER")


def test_dropping_removes_the_share_of_mentions_the_same_way_each_time():
    examples = make_examples(10)
    rewritten, counts = shift.rewrite_knowledge(examples, 0.3, 0.0, seed=0)
    assert counts["dropped"] == 12
    assert sum(len(knowledge_of(eg)) for eg in rewritten[:-1]) == 40 - 12
    again, _ = shift.rewrite_knowledge(examples, 0.3, 0.0, seed=0)
    assert [knowledge_of(eg) for eg in again] == [knowledge_of(eg) for eg in rewritten]
    other, _ = shift.rewrite_knowledge(examples, 0.3, 0.0, seed=1)
    assert [knowledge_of(eg) for eg in other] != [knowledge_of(eg) for eg in rewritten]


def test_spurious_mentions_are_typed_spans_of_the_post_that_touch_no_entity():
    examples = make_examples(10)
    rewritten, counts = shift.rewrite_knowledge(examples, 0.0, 0.3)
    assert counts["spurious_added"] == 12
    gold_tokens = {i for start, end, _ in GOLD for i in range(start, end)}
    n_added = 0
    for eg in rewritten[:-1]:
        added = knowledge_of(eg)[4:]
        n_added += len(added)
        assert all(mention.type in shift.DEFAULT_LABELS for mention in added)
        covered = {i for i, item in enumerate(align_mentions(WORDS, added)) if item}
        assert len(covered) >= len(added) and not covered & gold_tokens
    assert n_added == 12


@pytest.mark.parametrize("seed", range(4))
def test_a_spurious_mention_is_stored_as_the_extractor_would_and_read_back_as_added(seed):
    """Spans with `(`, `)` or `;` were stored as they stand: `hi;Obama (LOC)` read
    back as `hi` and `Obama`, a gold entity, and `lol;) (ORG)` lost its type."""
    words = ["Obama", "(via", "@AP)", "hi;Obama", "lol;)"]
    vocab = spacy.blank("en").vocab
    predicted, reference = Doc(vocab, words=words), Doc(vocab, words=words)
    reference.ents = [Span(reference, 0, 1, "PER")]
    predicted._.visual_context = VisualContext(knowledge=["Obama (person)"])
    rewritten, counts = shift.rewrite_knowledge([Example(predicted, reference)], 0.0, 1.0, seed)
    assert counts["spurious_added"] == 1
    obama, added = knowledge_of(rewritten[0])
    assert obama == Mention("Obama", "PER") and added.type in shift.DEFAULT_LABELS
    assert not set("();") & set(added.text)
    covered = {i for i, item in enumerate(align_mentions(words, [added])) if item}
    assert covered and 0 not in covered


def test_spurious_candidates_are_cleaned_as_stored_without_a_json_round_trip(monkeypatch):
    """Each candidate span was written as a JSON answer and parsed back (a quarter
    of the time spurious mentions took); it is cleaned directly, to the same text."""
    words = ["Obama", "(via", "@AP)", "hi;Obama", "lol;)"]
    vocab = spacy.blank("en").vocab
    example = Example(Doc(vocab, words=words), Doc(vocab, words=words))
    chosen = []

    class Recording(random.Random):
        def choice(self, seq):
            chosen.append(list(seq))
            return seq[0]

    monkeypatch.setattr(shift, "parse_answer", None)  # not called
    shift.spurious_mention(example, {0}, Recording())
    assert chosen[0] == [Mention(text) for text in (
        "via", "via @AP", "via @AP hi Obama", "@AP", "@AP hi Obama", "@AP hi Obama lol",
        "hi Obama", "hi Obama lol", "lol")]
