"""`spacy_ita.ner.tag_scheme`: each scheme's tag inventory, the moves between tags the
CRF may make, and the way from gold entities to tags and back to spans."""
import pytest
import spacy
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.training import Example, iob_to_biluo

from spacy_ita.ner.tag_scheme import allowed_moves, check_scheme, gold_tags, make_tags, tags_to_spans

TEXT = "Kobe Bryant visits New York and Oslo"
ENTITIES = [(0, 11, "PER"), (19, 27, "LOC"), (32, 36, "LOC")]


def moves(labels, scheme):
    """The allowed (tag, next tag) pairs, first tags and last tags."""
    tags = make_tags(labels, scheme)
    transitions, start, end = allowed_moves(tags, scheme)
    pairs = {(a, b) for i, a in enumerate(tags) for j, b in enumerate(tags) if transitions[i, j]}
    return (pairs, {tag for tag, ok in zip(tags, start) if ok},
            {tag for tag, ok in zip(tags, end) if ok})


def test_tag_inventory_starts_with_outside_then_each_label():
    assert make_tags(["LOC", "PER"], "BIO") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert make_tags(["PER"], "BILUO") == ["O", "B-PER", "I-PER", "L-PER", "U-PER"]


@pytest.mark.parametrize("scheme", ["IOB2", "bio", ""])
def test_an_unknown_scheme_is_named(scheme):
    with pytest.raises(ValueError, match=f"Unknown tag scheme {scheme!r}"):
        check_scheme(scheme)
    with pytest.raises(ValueError, match="BILUO"):
        make_tags(["PER"], scheme)


def test_bio_inside_only_continues_its_own_entity():
    pairs, first, last = moves(["LOC", "PER"], "BIO")
    assert {("B-PER", "I-PER"), ("I-PER", "I-PER"), ("B-LOC", "I-LOC")} <= pairs
    assert not {("O", "I-PER"), ("B-LOC", "I-PER"), ("I-LOC", "I-PER")} & pairs
    tags = make_tags(["LOC", "PER"], "BIO")
    assert {(a, b) for a in tags for b in tags if not b.startswith("I-")} <= pairs
    assert first == {"O", "B-LOC", "B-PER"}
    assert last == set(tags)


def test_biluo_entities_are_closed_before_anything_follows():
    pairs, first, last = moves(["PER"], "BILUO")
    assert pairs == {
        ("O", "O"), ("O", "B-PER"), ("O", "U-PER"),
        ("B-PER", "I-PER"), ("B-PER", "L-PER"), ("I-PER", "I-PER"), ("I-PER", "L-PER"),
        ("L-PER", "O"), ("L-PER", "B-PER"), ("L-PER", "U-PER"),
        ("U-PER", "O"), ("U-PER", "B-PER"), ("U-PER", "U-PER"),
    }
    assert first == {"O", "B-PER", "U-PER"}
    assert last == {"O", "L-PER", "U-PER"}


def test_gold_tags_in_each_scheme_and_unknown_gold():
    nlp = spacy.blank("en")
    example = Example.from_dict(nlp.make_doc(TEXT), {"entities": ENTITIES})
    assert gold_tags(example, "BIO") == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-LOC"]
    assert gold_tags(example, "BILUO") == \
        ["B-PER", "L-PER", "O", "B-LOC", "L-LOC", "O", "U-LOC"]
    partial = Example.from_dict(nlp.make_doc("Kobe visits Oslo"),
                                {"entities": ["U-PER", "-", "O"]})
    assert gold_tags(partial, "BIO") == ["B-PER", None, "O"]


@pytest.mark.parametrize("scheme", ["BIO", "BILUO"])
def test_tags_back_to_the_gold_spans(scheme):
    nlp = spacy.blank("en")
    example = Example.from_dict(nlp.make_doc(TEXT), {"entities": ENTITIES})
    spans = tags_to_spans(example.predicted, gold_tags(example, scheme), scheme)
    assert [(span.start_char, span.end_char, span.label_) for span in spans] == ENTITIES


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["O", "PER", "LOC"]), min_size=1, max_size=12),
       st.sampled_from(["BIO", "BILUO"]))
def test_gold_tags_always_make_a_sequence_the_crf_allows(token_labels, scheme):
    """Runs of a label are entities; their tags are a path the CRF can take."""
    nlp = spacy.blank("en")
    doc = nlp.make_doc(" ".join(f"w{i}" for i in range(len(token_labels))))
    iob = [label if label == "O" else ("I-" if i and token_labels[i - 1] == label else "B-")
           + label for i, label in enumerate(token_labels)]
    example = Example.from_dict(doc, {"entities": iob_to_biluo(iob)})
    tags = gold_tags(example, scheme)
    inventory = make_tags(["LOC", "PER"], scheme)
    transitions, start, end = allowed_moves(inventory, scheme)
    ids = [inventory.index(tag) for tag in tags]
    assert start[ids[0]] and end[ids[-1]]
    assert all(transitions[a, b] for a, b in zip(ids, ids[1:]))
