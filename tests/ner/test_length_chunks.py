"""How a batch's sequences are grouped into encoder calls (`length_chunks`)."""
import random

import pytest

from spacy_ita.ner.inputs import CALL_COST_POSITIONS, CHUNK_TOKENS, length_chunks


def calls_cost(chunks, lengths):
    """Padded positions of the calls plus the cost of each call."""
    return sum(CALL_COST_POSITIONS + len(chunk) * lengths[chunk[0]] for chunk in chunks)


def cheapest_cost(lengths):
    """The cheapest grouping's cost, by trying every split of the sorted lengths."""
    widths = sorted(lengths, reverse=True)
    best = [0.0] + [float("inf")] * len(widths)
    for end in range(1, len(widths) + 1):
        for first in range(end):
            rows = end - first
            if rows == 1 or rows * widths[first] <= CHUNK_TOKENS:
                best[end] = min(best[end], best[first] + CALL_COST_POSITIONS + rows * widths[first])
    return best[-1]


def test_one_long_post_does_not_pad_the_short_ones_to_its_length():
    lengths = [100] + [10] * 30
    chunks = length_chunks(lengths)
    assert chunks[0] == [0]
    assert sorted(chunks[1]) == list(range(1, 31))


def test_similar_lengths_share_one_call():
    assert length_chunks([30, 28, 29, 27, 26]) == [[0, 2, 1, 3, 4]]


def test_a_sequence_over_the_limit_runs_alone():
    assert length_chunks([5, CHUNK_TOKENS + 1, 4]) == [[1], [0, 2]]


def test_no_sequences_no_calls():
    assert length_chunks([]) == []


@pytest.mark.parametrize("seed", range(20))
def test_calls_hold_every_sequence_once_within_the_limits_at_the_least_cost(seed):
    rng = random.Random(seed)
    # Ties too: a run of equal lengths is where a call may start inside it.
    lengths = [rng.choice([rng.randint(1, 60), rng.randint(1, 700), 9, 9, 40, 3])
               for _ in range(rng.randint(1, 400))]
    chunks = length_chunks(lengths)
    assert sorted(index for chunk in chunks for index in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        assert lengths[chunk[0]] == max(lengths[index] for index in chunk)  # the call's width
        assert len(chunk) == 1 or len(chunk) * lengths[chunk[0]] <= CHUNK_TOKENS
    assert calls_cost(chunks, lengths) == cheapest_cost(lengths)


def test_equal_lengths_fill_each_call_to_the_limit():
    per_call = CHUNK_TOKENS // 3
    chunks = length_chunks([3] * (2 * per_call + 1))
    assert [len(chunk) for chunk in chunks] == [per_call, per_call, 1]
