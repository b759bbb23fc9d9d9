"""The CRF against brute-force enumeration of all tag sequences."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spacy_ita.ner.crf import LinearChainCRF, pad_sequences
from spacy_ita.ner.tag_scheme import allowed_moves, make_tags

TAGS = make_tags(["PER", "LOC"], "BIO")


def random_crf(seed: int, constrained: bool = True) -> LinearChainCRF:
    torch.manual_seed(seed)
    moves = allowed_moves(TAGS, "BIO") if constrained else ()
    crf = LinearChainCRF(len(TAGS), *moves)
    with torch.no_grad():
        for param in crf.parameters():
            param.normal_()
    return crf


def allowed_paths(crf, length):
    for path in itertools.product(range(crf.n_tags), repeat=length):
        if not crf.allowed_start[path[0]] or not crf.allowed_end[path[-1]]:
            continue
        if all(crf.allowed_transitions[a, b] for a, b in zip(path, path[1:])):
            yield path


def score_of(crf, emissions, path):
    score = crf.start[path[0]] + crf.end[path[-1]]
    score = score + sum(emissions[t, tag] for t, tag in enumerate(path))
    return score + sum(crf.transitions[a, b] for a, b in zip(path, path[1:]))


def brute_force(crf, emissions):
    paths = list(allowed_paths(crf, len(emissions)))
    scores = torch.stack([score_of(crf, emissions, p) for p in paths])
    log_z = torch.logsumexp(scores, dim=0)
    marginals = torch.zeros_like(emissions)
    for path, score in zip(paths, scores):
        for t, tag in enumerate(path):
            marginals[t, tag] += torch.exp(score - log_z)
    return log_z, marginals, paths[int(scores.argmax())]


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_unequal_lengths(seed):
    crf = random_crf(seed)
    lengths = [1, 4, 3]
    rows = [torch.randn(n, crf.n_tags) for n in lengths]
    emissions, mask = pad_sequences(rows)
    log_z = crf.log_partition(emissions, mask)
    log_marginals = crf.log_marginals(emissions, mask)
    paths = crf.decode(emissions, mask)
    for i, row in enumerate(rows):
        expected_z, expected_marginals, expected_path = brute_force(crf, row)
        assert log_z[i].item() == pytest.approx(expected_z.item(), abs=1e-4)
        n = lengths[i]
        assert torch.allclose(log_marginals[i, :n].exp(), expected_marginals, atol=1e-4)
        assert tuple(paths[i]) == expected_path


def test_padding_does_not_change_results():
    crf = random_crf(7)
    row = torch.randn(3, crf.n_tags)
    alone = crf.log_partition(*pad_sequences([row]))
    padded = crf.log_partition(*pad_sequences([row, torch.randn(6, crf.n_tags)]))
    assert alone[0].item() == pytest.approx(padded[0].item(), abs=1e-5)


def test_nll_of_gold_path_and_partial_gold():
    crf = random_crf(3)
    row = torch.randn(4, crf.n_tags)
    emissions, mask = pad_sequences([row])
    log_z, _, _ = brute_force(crf, row)
    gold = [1, 2, 0, 3]  # B-PER I-PER O B-LOC
    gold_mask = torch.zeros(1, 4, crf.n_tags, dtype=torch.bool)
    gold_mask[0, torch.arange(4), torch.tensor(gold)] = True
    expected = log_z - score_of(crf, row, gold)
    assert crf.nll(emissions, mask, gold_mask)[0].item() == pytest.approx(expected.item(), abs=1e-4)
    # Unknown gold at token 2: the NLL marginalises over it, so it is lower.
    gold_mask[0, 2] = True
    assert crf.nll(emissions, mask, gold_mask)[0].item() < expected.item()


def test_constraints_forbid_invalid_bio():
    crf = random_crf(0)
    # Emissions that strongly prefer the invalid sequence O I-PER I-LOC.
    emissions = torch.full((1, 3, crf.n_tags), -5.0)
    emissions[0, 0, TAGS.index("O")] = 5
    emissions[0, 1, TAGS.index("I-PER")] = 5
    emissions[0, 2, TAGS.index("I-LOC")] = 5
    path = [TAGS[i] for i in crf.decode(emissions, torch.ones(1, 3, dtype=torch.bool))[0]]
    assert path[1] != "I-PER"
    for prev, tag in zip(path, path[1:]):
        assert not tag.startswith("I-") or prev[2:] == tag[2:]
    marginals = crf.log_marginals(emissions, torch.ones(1, 3, dtype=torch.bool)).exp()
    assert marginals[0, 0, TAGS.index("I-PER")] < 1e-3


def test_biluo_constraints():
    tags = make_tags(["X"], "BILUO")  # O B-X I-X L-X U-X
    transitions, start, end = allowed_moves(tags, "BILUO")
    allowed = {(a, b) for a in tags for b in tags if transitions[tags.index(a), tags.index(b)]}
    assert ("B-X", "L-X") in allowed and ("B-X", "O") not in allowed
    assert ("U-X", "B-X") in allowed and ("O", "I-X") not in allowed
    assert not start[tags.index("L-X")] and not end[tags.index("B-X")]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
)
def test_crf_properties(seed, lengths):
    crf = random_crf(seed)
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randn(n, crf.n_tags, generator=generator) * 3 for n in lengths]
    emissions, mask = pad_sequences(rows)
    marginals = crf.log_marginals(emissions, mask).exp()
    sums = marginals.sum(dim=-1)[mask]
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-4)
    log_z = crf.log_partition(emissions, mask)
    for i, path in enumerate(crf.decode(emissions, mask)):
        assert len(path) == lengths[i]
        assert crf.allowed_start[path[0]] and crf.allowed_end[path[-1]]
        assert all(crf.allowed_transitions[a, b] for a, b in zip(path, path[1:]))
        best = score_of(crf, rows[i], path)
        assert log_z[i] >= best - 1e-4
        # The Viterbi path scores at least as high as random allowed paths.
        for _ in range(5):
            sample = sample_allowed_path(crf, lengths[i], generator)
            assert best >= score_of(crf, rows[i], sample) - 1e-4


def sample_allowed_path(crf, length, generator):
    choices = torch.nonzero(crf.allowed_start).flatten()
    path = [int(choices[torch.randint(len(choices), (1,), generator=generator)])]
    while len(path) < length:
        choices = torch.nonzero(crf.allowed_transitions[path[-1]]).flatten()
        path.append(int(choices[torch.randint(len(choices), (1,), generator=generator)]))
    return path
