"""Encoder inputs for the tagger: (doc, context) pairs -> padded subword sequences.

Without context a doc becomes `[CLS] sentence [SEP]` (text-only view); with
it, `[CLS] sentence [SEP] context [SEP]` (cross-modal view), using the
tokenizer's own special tokens. The context is cut to fit the encoder; a
sentence too long for the encoder is split into overlapping windows, so that no
token is ever left without a vector. A pooling index maps the encoder's
subword vectors back onto spaCy tokens.
"""
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc

from ..knowledge.mentions import Mention
from .token_features import TokenFeatures


class TaggerInput(NamedTuple):
    """One doc as the tagger sees it in one view: the text-only view has no
    context; the cross-modal view has the rendered context and the mentions
    that its knowledge names."""

    doc: Doc
    context: Optional[str] = None
    mentions: Tuple[Mention, ...] = ()

POOLINGS = ("first", "mean")
# A single token (a URL, a 5,000-character string) never takes more subwords than this.
MAX_PIECES_PER_TOKEN = 32
# Padded positions per encoder call at most (see length_chunks).
CHUNK_TOKENS = 2048
# What one more encoder call costs, in padded positions: a batch is split where
# that saves more padding (the fastest on Twitter-2015 posts, docs/benchmarks.md).
CALL_COST_POSITIONS = 48


@dataclass
class EncoderBatch:
    """Everything the torch module needs for one batch of docs.

    input_ids, attention_mask and token_type_ids hold one padded chunk each
    (token_type_ids is None for encoders without segment ids). Token vectors are
    weighted sums of subword vectors: pool_source indexes the concatenated,
    flattened chunk outputs, pool_target the spaCy token (over the whole batch),
    pool_weight averages over subwords and over the windows of long sentences.
    """

    input_ids: List[torch.Tensor]
    attention_mask: List[torch.Tensor]
    token_type_ids: Optional[List[torch.Tensor]]
    pool_source: torch.Tensor
    pool_target: torch.Tensor
    pool_weight: torch.Tensor
    n_tokens: int
    features: Optional[TokenFeatures] = None


@dataclass
class SpecialTokens:
    """Where a tokenizer puts its special tokens (and segment ids) around one
    text or a text pair: (ids before, between, after) and their type ids."""

    single: Tuple[List[int], List[int]]
    pair: Tuple[List[int], List[int], List[int]]
    single_types: Tuple[List[int], List[int], int]
    pair_types: Tuple[List[int], List[int], List[int], int, int]


@dataclass
class _Sequence:
    """One encoder sequence and, for each of its pooled positions, the token it feeds."""

    ids: List[int]
    types: List[int]
    positions: numpy.ndarray  # positions in `ids`
    tokens: numpy.ndarray  # token index within the batch
    weights: numpy.ndarray


def special_tokens(tokenizer) -> SpecialTokens:
    """Read the special-token template off the tokenizer's own encoding of a pair."""
    cached = getattr(tokenizer, "_spacy_ita_special_tokens", None)
    if cached is not None:
        return cached

    def parts(encoding, n_segments):
        ids = encoding["input_ids"]
        types = encoding.get("token_type_ids") or [0] * len(ids)
        seq = encoding.sequence_ids()
        pieces, piece_types, segment_types = [[]], [[]], []
        for i, segment in enumerate(seq):
            if segment is None:
                pieces[-1].append(ids[i])
                piece_types[-1].append(types[i])
            elif i == 0 or seq[i - 1] != segment:
                segment_types.append(types[i])
                pieces.append([])
                piece_types.append([])
        assert len(pieces) == n_segments + 1, "unexpected special-token template"
        return pieces, piece_types, segment_types

    single, single_types, single_segment = parts(tokenizer("a"), 1)
    pair, pair_types, pair_segments = parts(tokenizer("a", "b"), 2)
    result = SpecialTokens(
        single=(single[0], single[1]),
        pair=(pair[0], pair[1], pair[2]),
        single_types=(single_types[0], single_types[1], single_segment[0]),
        pair_types=(pair_types[0], pair_types[1], pair_types[2], *pair_segments),
    )
    tokenizer._spacy_ita_special_tokens = result
    return result


def word_pieces(tokenizer, docs: Sequence[Doc]) -> List[List[List[int]]]:
    """Subword ids per token per doc; a token the tokenizer drops (whitespace,
    zero-width characters) becomes the unknown token so it still gets a score.

    `verbose=False`: a sentence longer than the encoder is windowed on purpose,
    so the tokenizer's length warning would only be noise.
    """
    word_lists = [[token.text for token in doc] for doc in docs]
    non_empty = [i for i, words in enumerate(word_lists) if words]
    result: List[List[List[int]]] = [[] for _ in docs]
    if not non_empty:
        return result
    encoding = tokenizer(
        [word_lists[i] for i in non_empty],
        is_split_into_words=True,
        add_special_tokens=False,
        verbose=False,
    )
    for row, i in enumerate(non_empty):
        pieces: List[List[int]] = [[] for _ in word_lists[i]]
        for piece, word in zip(encoding["input_ids"][row], encoding.word_ids(row)):
            if word is not None and len(pieces[word]) < MAX_PIECES_PER_TOKEN:
                pieces[word].append(piece)
        result[i] = [p or [tokenizer.unk_token_id] for p in pieces]
    return result


def context_pieces(tokenizer, contexts: Sequence[Optional[str]]) -> Dict[int, List[int]]:
    """Subword ids of each non-blank context, by input row."""
    rows = [i for i, context in enumerate(contexts) if context and context.strip()]
    if not rows:
        return {}
    encoded = tokenizer([contexts[i] for i in rows], add_special_tokens=False, verbose=False)
    return dict(zip(rows, encoded["input_ids"]))


def doc_sequences(
    pieces: List[List[int]],
    context: List[int],
    specials: SpecialTokens,
    limit: int,
    window_overlap: int,
    pooling: str,
    token_offset: int,
) -> List[_Sequence]:
    """The encoder sequences of one doc: the sentence paired with its context
    (cut to fit), or the sentence alone in as many windows as it needs."""
    n_pieces_per_token = numpy.array([len(p) for p in pieces])
    flat_pieces = [piece for token_pieces in pieces for piece in token_pieces]
    n_pieces = len(flat_pieces)
    piece_token = numpy.repeat(numpy.arange(len(pieces)), n_pieces_per_token)
    if pooling == "first":
        pooled = numpy.r_[True, piece_token[1:] != piece_token[:-1]]
        n_pooled = numpy.ones(len(pieces))
    else:
        pooled = numpy.ones(n_pieces, dtype=bool)
        n_pooled = n_pieces_per_token
    pair_overhead = sum(len(part) for part in specials.pair)
    context = context[: max(0, limit - pair_overhead - n_pieces)]
    spans = []  # (ids, types, first subword, end subword, offset of the first subword)
    if context:
        prefix, middle, suffix = specials.pair
        pre_t, mid_t, suf_t, a_type, b_type = specials.pair_types
        ids = prefix + flat_pieces + middle + context + suffix
        types = pre_t + [a_type] * n_pieces + mid_t + [b_type] * len(context) + suf_t
        spans.append((ids, types, 0, n_pieces, len(prefix)))
    else:
        prefix, suffix = specials.single
        pre_t, suf_t, a_type = specials.single_types
        width = limit - len(prefix) - len(suffix)
        for start in window_starts(n_pieces, width, window_overlap):
            end = min(start + width, n_pieces)
            ids = prefix + flat_pieces[start:end] + suffix
            types = pre_t + [a_type] * (end - start) + suf_t
            spans.append((ids, types, start, end, len(prefix)))
    coverage = numpy.zeros(n_pieces)
    for _, _, start, end, _ in spans:
        coverage[start:end] += 1
    sequences = []
    for ids, types, start, end, offset in spans:
        piece_index = numpy.arange(start, end)[pooled[start:end]]
        token = piece_token[piece_index]
        sequences.append(
            _Sequence(
                ids,
                types,
                positions=offset + piece_index - start,
                tokens=token_offset + token,
                weights=1.0 / (coverage[piece_index] * n_pooled[token]),
            )
        )
    return sequences


def encode(
    tokenizer,
    inputs: Sequence[TaggerInput],
    limit: int,
    window_overlap: int,
    pooling: str,
    device: torch.device,
) -> EncoderBatch:
    """Tokenise the docs and their contexts and build the encoder batch."""
    specials = special_tokens(tokenizer)
    doc_pieces = word_pieces(tokenizer, [item.doc for item in inputs])
    contexts = context_pieces(tokenizer, [item.context for item in inputs])
    sequences: List[_Sequence] = []
    token_offset = 0
    for row, pieces in enumerate(doc_pieces):
        if pieces:
            sequences += doc_sequences(
                pieces, contexts.get(row, []), specials, limit, window_overlap, pooling,
                token_offset,
            )
            token_offset += len(pieces)
    uses_types = "token_type_ids" in tokenizer.model_input_names
    return pad_chunks(sequences, tokenizer.pad_token_id or 0, token_offset, uses_types, device)


def pad_chunks(
    sequences: List[_Sequence], pad_id: int, n_tokens: int, uses_types: bool, device
) -> EncoderBatch:
    """Pad the sequences into chunks of similar length (see length_chunks) and
    flatten the pooling index over the concatenated chunk outputs."""
    as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
    input_ids, attention, type_ids = [], [], []
    sources = [numpy.zeros(0, dtype=numpy.int64)] * len(sequences)
    flat_start = 0
    for chunk in length_chunks([len(seq.ids) for seq in sequences]):
        width = len(sequences[chunk[0]].ids)
        ids = numpy.full((len(chunk), width), pad_id)
        types = numpy.zeros((len(chunk), width), dtype=numpy.int64)
        mask = numpy.zeros((len(chunk), width), dtype=numpy.int64)
        for row, index in enumerate(chunk):
            seq = sequences[index]
            ids[row, : len(seq.ids)] = seq.ids
            types[row, : len(seq.ids)] = seq.types
            mask[row, : len(seq.ids)] = 1
            sources[index] = flat_start + row * width + seq.positions
        flat_start += ids.size
        input_ids.append(as_long(ids))
        attention.append(as_long(mask))
        type_ids.append(as_long(types))
    return EncoderBatch(
        input_ids=input_ids,
        attention_mask=attention,
        token_type_ids=type_ids if uses_types else None,
        pool_source=as_long(numpy.concatenate(sources)),
        pool_target=as_long(numpy.concatenate([seq.tokens for seq in sequences])),
        pool_weight=torch.as_tensor(
            numpy.concatenate([seq.weights for seq in sequences]),
            dtype=torch.float32,
            device=device,
        ),
        n_tokens=n_tokens,
    )


def length_chunks(lengths: List[int]) -> List[List[int]]:
    """Group sequence indices, longest first, into encoder calls of similar
    length: each holds at most CHUNK_TOKENS padded positions (or one
    sequence), and the grouping pads the fewest positions plus
    CALL_COST_POSITIONS per call.

    Padding short posts to the length of the batch's longest wastes compute
    (about a quarter of a batch of tweets), and a call per length wastes the
    encoder's fixed cost per call; the best split of the sorted lengths is
    found by dynamic programming.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    widths = [lengths[i] for i in order]
    prefix, run_start = [0], []
    for i, width in enumerate(widths):
        prefix.append(prefix[-1] + width)
        run_start.append(run_start[-1] if i and widths[i - 1] == width else i)
    # cost[j]: the cheapest grouping of the first j sequences; start[j]: where its last call starts.
    cost, start = [0] * (len(widths) + 1), [0] * (len(widths) + 1)
    for end in range(1, len(widths) + 1):
        cost[end], start[end] = cost[end - 1] + CALL_COST_POSITIONS + widths[end - 1], end - 1
        for first in _call_starts(widths, run_start, end):
            positions = (end - first) * widths[first]
            padding = positions - (prefix[end] - prefix[first])
            # Widening the call only adds padding: stop once padding alone costs more.
            if prefix[end] + CALL_COST_POSITIONS + padding >= cost[end]:
                break
            candidate = cost[first] + CALL_COST_POSITIONS + positions
            if candidate < cost[end]:
                cost[end], start[end] = candidate, first
    chunks: List[List[int]] = []
    end = len(widths)
    while end:
        chunks.append(order[start[end]:end])
        end = start[end]
    return chunks[::-1]


def _call_starts(widths: List[int], run_start: List[int], end: int) -> Iterator[int]:
    """Where a call ending before `end` may start, right to left, among sorted
    `widths`: per run of equal widths, its first sequence, or where the call
    is full when the run is longer: a call starting inside a run with room to
    spare costs no more with the sequence before it taken in (its width
    stays; the call before loses a row). Stops at the limit."""
    last = end - 1
    while last >= 0:
        full_from = end - max(1, CHUNK_TOKENS // widths[last])
        if full_from > last:
            return
        if full_from > run_start[last]:
            yield full_from
            return
        yield run_start[last]
        last = run_start[last] - 1


def window_starts(n_pieces: int, width: int, overlap: int) -> List[int]:
    """Start offsets of windows of `width` subwords covering `n_pieces`, each
    sharing `overlap` subwords (at most half a window) with the previous one."""
    if n_pieces <= width:
        return [0]
    stride = max(1, width - min(overlap, width // 2))
    starts = list(range(0, n_pieces - width + 1, stride))
    if starts[-1] + width < n_pieces:
        starts.append(n_pieces - width)
    return starts
