"""Entity labels <-> CRF tags (BIO or BILUO), and which tag moves are valid."""
from typing import List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc, Span
from spacy.training import Example, biluo_tags_to_spans, iob_to_biluo

SCHEMES = ("BIO", "BILUO")
OUTSIDE = "O"


def make_tags(labels: Sequence[str], scheme: str) -> List[str]:
    """The tag inventory: O first, then the scheme's prefixes for each label."""
    check_scheme(scheme)
    prefixes = "BI" if scheme == "BIO" else "BILU"
    return [OUTSIDE] + [f"{p}-{label}" for label in labels for p in prefixes]


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown tag scheme {scheme!r}; expected one of {SCHEMES}")


def _split(tag: str) -> Tuple[str, Optional[str]]:
    return (OUTSIDE, None) if tag == OUTSIDE else (tag[0], tag[2:])


def allowed_moves(tags: Sequence[str], scheme: str):
    """Boolean (transitions, start, end) masks of the valid tag sequences.

    BIO: I-X only after B-X or I-X. BILUO additionally: I-X/L-X only inside an
    open X entity, which must be closed by L-X before anything else follows.
    """
    check_scheme(scheme)
    n = len(tags)
    parts = [_split(tag) for tag in tags]
    inside = {"B", "I"} if scheme == "BILUO" else set()  # prefixes leaving an entity open

    def continues(prefix: str) -> bool:
        return prefix in ("I", "L")

    transitions = numpy.zeros((n, n), dtype=bool)
    for i, (prev_prefix, prev_label) in enumerate(parts):
        for j, (prefix, label) in enumerate(parts):
            if prev_prefix in inside:
                ok = continues(prefix) and label == prev_label
            elif continues(prefix):
                ok = scheme == "BIO" and prev_prefix in ("B", "I") and label == prev_label
            else:
                ok = True
            transitions[i, j] = ok
    start = numpy.array([not continues(prefix) for prefix, _ in parts])
    end = numpy.array([prefix not in inside for prefix, _ in parts])
    return transitions, start, end


def gold_tags(example: Example, scheme: str) -> List[Optional[str]]:
    """Gold tags aligned to the predicted tokens; None where the gold is unknown."""
    biluo = example.get_aligned_ner()
    tags = [None if tag in (None, "-", "") else tag for tag in biluo]
    return tags if scheme == "BILUO" else [_biluo_to_bio(tag) for tag in tags]


def _biluo_to_bio(tag: Optional[str]) -> Optional[str]:
    if tag is None or tag == OUTSIDE:
        return tag
    prefix, label = _split(tag)
    return f"{'B' if prefix in ('B', 'U') else 'I'}-{label}"


def tags_to_spans(doc: Doc, tags: Sequence[str], scheme: str) -> List[Span]:
    """Entity spans from a valid tag sequence of either scheme."""
    biluo = iob_to_biluo(list(tags)) if scheme == "BIO" else list(tags)
    return biluo_tags_to_spans(doc, biluo)
