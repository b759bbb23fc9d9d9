"""Issue 6, point 8: property-based tests that were missing.

Already in place and matching the spec: tests/ner/test_crf.py::test_crf_properties
(marginals sum to 1, Viterbi paths allowed and scoring >= sampled allowed
paths, log Z >= best score; BIO constraints only) and
tests/corpus/test_mner.py::test_round_trip_property (write_mner/read_mner).
Added here: the same CRF properties under BILUO constraints and without
constraints; decoded tag sequences always become valid spans; gold tags
round-trip to the same entities in both schemes; and the MNER reader fed
arbitrary format-like text either reads it or names file:line.
"""
import re

import spacy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spacy.tokens import Doc, Span
from spacy.training import Example

from spacy_ita.corpus.mner import read_mner
from spacy_ita.ner.crf import LinearChainCRF, pad_sequences
from spacy_ita.ner.tag_scheme import allowed_moves, gold_tags, make_tags, tags_to_spans

VOCAB = spacy.blank("en").vocab
SCHEMES = {"BIO": make_tags(["PER", "LOC"], "BIO"), "BILUO": make_tags(["PER", "LOC"], "BILUO")}


def crf_for(scheme, seed):
    torch.manual_seed(seed)
    if scheme == "none":
        crf = LinearChainCRF(5)
    else:
        crf = LinearChainCRF(len(SCHEMES[scheme]), *allowed_moves(SCHEMES[scheme], scheme))
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.normal_(std=2.0)
    return crf


def path_score(crf, emissions, path):
    score = crf.start[path[0]] + crf.end[path[-1]] + sum(
        emissions[t, tag] for t, tag in enumerate(path))
    return score + sum(crf.transitions[a, b] for a, b in zip(path, path[1:]))


def is_allowed(crf, path):
    return bool(crf.allowed_start[path[0]] and crf.allowed_end[path[-1]] and all(
        crf.allowed_transitions[a, b] for a, b in zip(path, path[1:])))


def random_allowed_path(crf, length, rng):
    """A uniformly chosen allowed continuation at each step; retried until it
    can end (BILUO must close an open entity)."""
    for _ in range(200):
        options = torch.nonzero(crf.allowed_start).flatten().tolist()
        path = [rng.choice(options)]
        while len(path) < length:
            options = torch.nonzero(crf.allowed_transitions[path[-1]]).flatten().tolist()
            path.append(rng.choice(options))
        if crf.allowed_end[path[-1]]:
            return path
    return None


@settings(max_examples=40, deadline=None)
@given(scheme=st.sampled_from(["BILUO", "none"]), seed=st.integers(0, 10_000),
       lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4))
def test_crf_properties_under_biluo_and_without_constraints(scheme, seed, lengths):
    import random

    rng = random.Random(seed)
    crf = crf_for(scheme, seed)
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randn(n, crf.n_tags, generator=generator) * 3 for n in lengths]
    emissions, mask = pad_sequences(rows)
    with torch.no_grad():
        marginals = crf.log_marginals(emissions, mask).exp()
        sums = marginals.sum(-1)[mask]
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-4)
        log_z = crf.log_partition(emissions, mask)
        for i, path in enumerate(crf.decode(emissions, mask)):
            assert len(path) == lengths[i] and is_allowed(crf, path)
            best = path_score(crf, rows[i], path)
            assert log_z[i] >= best - 1e-4
            for _ in range(5):
                sample = random_allowed_path(crf, lengths[i], rng)
                if sample is not None:
                    assert best >= path_score(crf, rows[i], sample) - 1e-4
            # Forbidden moves have zero marginal mass.
            if scheme == "BILUO":
                first = marginals[i, 0]
                assert float(first[~crf.allowed_start].sum()) < 1e-4


@settings(max_examples=60, deadline=None)
@given(scheme=st.sampled_from(["BIO", "BILUO"]), seed=st.integers(0, 10_000),
       length=st.integers(1, 12))
def test_decoded_paths_always_become_valid_spans(scheme, seed, length):
    crf = crf_for(scheme, seed)
    emissions = torch.randn(1, length, crf.n_tags, generator=torch.Generator().manual_seed(seed))
    (path,) = crf.decode(emissions * 4, torch.ones(1, length, dtype=torch.bool))
    doc = Doc(VOCAB, words=[f"w{i}" for i in range(length)])
    spans = tags_to_spans(doc, [SCHEMES[scheme][i] for i in path], scheme)
    doc.set_ents(spans, default="outside")  # raises on overlap or bad spans
    assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)


@st.composite
def entity_docs(draw):
    n = draw(st.integers(1, 10))
    spans, i = [], 0
    while i < n:
        if draw(st.booleans()):
            end = draw(st.integers(i + 1, n))
            spans.append((i, end, draw(st.sampled_from(["PER", "LOC"]))))
            i = end
        else:
            i += 1
    return n, spans


@settings(max_examples=80, deadline=None)
@given(data=entity_docs(), scheme=st.sampled_from(["BIO", "BILUO"]))
def test_gold_tags_round_trip_to_the_same_entities(data, scheme):
    n, spans = data
    reference = Doc(VOCAB, words=[f"w{i}" for i in range(n)])
    reference.set_ents([Span(reference, s, e, label) for s, e, label in spans],
                       default="outside")
    predicted = Doc(VOCAB, words=[f"w{i}" for i in range(n)])
    tags = gold_tags(Example(predicted, reference), scheme)
    assert all(tag in SCHEMES[scheme] for tag in tags)
    back = tags_to_spans(predicted, tags, scheme)
    assert [(s.start, s.end, s.label_) for s in back] == spans


FRAGMENTS = st.sampled_from([
    "IMGID:1", "IMGID:22", "IMGID:", "IMGID:a b", "Kobe\tB-PER", "Bryant\tI-PER", "x\tO",
    "y\tE-LOC", "z\tS-ORG", "u\tU-X", "l\tL-X", "bad line", "a\tb\tc", "\tO", "New York\tB-LOC",
    "\u00a0\tO", "\ufeffx\tO", "x\tB-", "x\tFOO", "😀\tO", "Zürich\tB-LOC", "  ", "",
])
NEWLINES = st.sampled_from(["\n", "\r\n", "\r"])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.tuples(FRAGMENTS, NEWLINES), max_size=14),
       bom=st.booleans(), final_newline=st.booleans())
def test_reader_reads_or_names_file_and_line(tmp_path, lines, bom, final_newline):
    text = "".join(fragment + newline for fragment, newline in lines)
    if not final_newline:
        text = text.rstrip("\r\n")
    path = tmp_path / "fuzz.txt"
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))
    n_lines = len(re.split(r"\r\n|\r|\n", text))
    try:
        docs = list(read_mner(path, nlp_or_vocab=VOCAB))
    except ValueError as err:
        match = re.match(rf"{re.escape(str(path))}:(\d+): ", str(err))
        assert match, str(err)
        assert 1 <= int(match.group(1)) <= n_lines
        return
    for doc in docs:
        assert len(doc) > 0
        assert doc.text == " ".join(token.text for token in doc)
        assert all(t.ent_iob_ in ("B", "I", "O") for t in doc)
