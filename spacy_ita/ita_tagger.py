"""The thinc model `spacy-ita.ItaTagger.v1`: (doc, context) pairs -> emission scores.

Each input is a Doc and an optional context string. Without context the
encoder sees `[CLS] sentence [SEP]` (text-only view); with it,
`[CLS] sentence [SEP] context [SEP]` (cross-modal view), using the
tokenizer's own special tokens. Only the sentence's tokens get scores. The
context is cut to fit the encoder; a sentence too long for the encoder is
split into overlapping windows, so no token is ever left without a score.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
import torch
from spacy.tokens import Doc
from spacy.util import registry
from spacy_transformers.layers.transformer_model import huggingface_from_pretrained
from thinc.api import (
    ArgsKwargs,
    Model,
    PyTorchWrapper_v3,
    get_torch_default_device,
    torch2xp,
    xp2torch,
)
from thinc.types import Floats2d

from .pytorch_ita_tagger import ItaTaggerModule, deserialize_module, serialize_module

TaggerInput = Tuple[Doc, Optional[str]]
POOLINGS = ("first", "mean")
# A single token (a URL, a 5,000-character string) never takes more subwords than this.
MAX_PIECES_PER_TOKEN = 32
# Padded positions per encoder call (see _length_chunks).
CHUNK_TOKENS = 2048


@registry.architectures("spacy-ita.ItaTagger.v1")
def build_ita_tagger(
    name: str,
    pooling: str = "first",
    dropout: float = 0.1,
    max_length: int = 512,
    window_overlap: int = 128,
    tokenizer_config: Dict = {},
    transformer_config: Dict = {},
    nO: Optional[int] = None,
) -> Model[List[TaggerInput], List[Floats2d]]:
    """name: a Hugging Face model name or a local path (see spacy-ita.bundled_encoder.v1).
    pooling: "first" subword or "mean" of subwords per spaCy token.
    max_length: longest sequence given to the encoder (capped by the encoder's own limit).
    window_overlap: subwords shared by consecutive windows of a long sentence.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if max_length < 8:
        raise ValueError(f"max_length must be at least 8, got {max_length}")
    torch_layer = PyTorchWrapper_v3(
        None,
        convert_inputs=_convert_inputs,
        convert_outputs=_convert_outputs,
        serialize_model=serialize_module,
        deserialize_model=lambda _, data, device: deserialize_module(data, dropout, device),
    )
    return Model(
        "ita_tagger",
        _forward,
        init=_init,
        layers=[torch_layer],
        dims={"nO": nO},
        attrs={
            "name": name,
            "pooling": pooling,
            "dropout": dropout,
            "max_length": max_length,
            "window_overlap": window_overlap,
            "tokenizer_config": dict(tokenizer_config),
            "transformer_config": dict(transformer_config),
            "allowed_moves": None,
        },
    )


def get_module(model: Model) -> ItaTaggerModule:
    """The PyTorch module inside an initialised tagger (its CRF scores and decodes)."""
    module = model.layers[0].shims[0]._model
    if module is None:
        raise ValueError(
            "The ita_ner model is not initialised: call nlp.initialize() or load a "
            "trained pipeline first."
        )
    return module


def _init(model: Model, X=None, Y=None) -> None:
    """Load the pretrained encoder (from the hub or a local path) and size the head."""
    if model.get_dim("nO") is None:
        raise ValueError("ItaTagger needs nO (the number of tags) before initialisation")
    hf = huggingface_from_pretrained(
        model.attrs["name"],
        {"use_fast": True, **model.attrs["tokenizer_config"]},
        dict(model.attrs["transformer_config"]),
    )
    if not hf.tokenizer.is_fast:
        raise ValueError(f"ita_ner needs a fast tokenizer; {model.attrs['name']} has none")
    moves = model.attrs["allowed_moves"]
    module = ItaTaggerModule(
        hf.transformer,
        hf.tokenizer,
        model.get_dim("nO"),
        model.attrs["dropout"],
        None if moves is None else tuple(torch.tensor(m) for m in moves),
    )
    model.layers[0].shims[0]._model = module.to(get_torch_default_device())


def _forward(model: Model, inputs: List[TaggerInput], is_train: bool):
    torch_layer = model.layers[0]
    module = get_module(model)
    lengths = [len(doc) for doc, _ in inputs]
    n_tags = module.emission.out_features
    if sum(lengths) == 0:
        empty = [model.ops.alloc2f(0, n_tags) for _ in inputs]
        return empty, lambda d_scores: []
    batch = _encode(
        module.tokenizer,
        inputs,
        _sequence_limit(module, model.attrs["max_length"]),
        model.attrs["window_overlap"],
        model.attrs["pooling"],
        module.emission.weight.device,
    )
    flat_scores, backprop_flat = torch_layer(batch, is_train)
    scores = model.ops.unflatten(flat_scores, model.ops.asarray1i(lengths))

    def backprop(d_scores: List[Floats2d]) -> List:
        backprop_flat(model.ops.flatten(d_scores))
        return []

    return scores, backprop


def _sequence_limit(module: ItaTaggerModule, max_length: int) -> int:
    limits = [max_length, module.tokenizer.model_max_length]
    positions = getattr(module.encoder.config, "max_position_embeddings", None)
    if positions:
        limits.append(positions)
    return min(limits)


def _convert_inputs(model: Model, batch: Dict, is_train: bool):
    return ArgsKwargs(args=(), kwargs=batch), lambda d_inputs: []


def _convert_outputs(model: Model, inputs_outputs, is_train: bool):
    _, scores = inputs_outputs

    def backprop(d_scores: Floats2d) -> ArgsKwargs:
        grads = xp2torch(d_scores, device=scores.device)
        return ArgsKwargs(args=(scores,), kwargs={"grad_tensors": grads})

    return torch2xp(scores), backprop


@dataclass
class _SpecialTokens:
    """Where a tokenizer puts its special tokens around one text or a text pair."""

    single: Tuple[List[int], List[int]]
    pair: Tuple[List[int], List[int], List[int]]
    single_types: Tuple[List[int], List[int], int]
    pair_types: Tuple[List[int], List[int], List[int], int, int]


def _special_tokens(tokenizer) -> _SpecialTokens:
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
    result = _SpecialTokens(
        single=(single[0], single[1]),
        pair=(pair[0], pair[1], pair[2]),
        single_types=(single_types[0], single_types[1], single_segment[0]),
        pair_types=(pair_types[0], pair_types[1], pair_types[2], *pair_segments),
    )
    tokenizer._spacy_ita_special_tokens = result
    return result


def _word_pieces(tokenizer, docs: Sequence[Doc]) -> List[List[List[int]]]:
    """Subword ids per token per doc; a token the tokenizer drops (whitespace,
    zero-width characters) becomes the unknown token so it still gets a score."""
    word_lists = [[token.text for token in doc] for doc in docs]
    non_empty = [i for i, words in enumerate(word_lists) if words]
    result: List[List[List[int]]] = [[] for _ in docs]
    if not non_empty:
        return result
    encoding = tokenizer(
        [word_lists[i] for i in non_empty], is_split_into_words=True, add_special_tokens=False
    )
    for row, i in enumerate(non_empty):
        pieces: List[List[int]] = [[] for _ in word_lists[i]]
        for piece, word in zip(encoding["input_ids"][row], encoding.word_ids(row)):
            if word is not None and len(pieces[word]) < MAX_PIECES_PER_TOKEN:
                pieces[word].append(piece)
        result[i] = [p or [tokenizer.unk_token_id] for p in pieces]
    return result


def _encode(
    tokenizer,
    inputs: List[TaggerInput],
    limit: int,
    window_overlap: int,
    pooling: str,
    device: torch.device,
) -> Dict:
    """Tokenise, build encoder sequences (pairs, single, or windows), and the
    pooling triples that map encoder outputs back onto spaCy tokens."""
    specials = _special_tokens(tokenizer)
    doc_pieces = _word_pieces(tokenizer, [doc for doc, _ in inputs])
    contexts = [context for _, context in inputs]
    context_rows = [i for i, c in enumerate(contexts) if c and c.strip()]
    context_ids: Dict[int, List[int]] = {}
    if context_rows:
        encoded = tokenizer([contexts[i] for i in context_rows], add_special_tokens=False)
        context_ids = dict(zip(context_rows, encoded["input_ids"]))
    single_overhead = len(specials.single[0]) + len(specials.single[1])
    pair_overhead = sum(len(part) for part in specials.pair)

    sequences: List[Tuple[List[int], List[int]]] = []
    sources, targets, weights = [], [], []
    token_offset = 0
    for row, pieces in enumerate(doc_pieces):
        if not pieces:
            continue
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
        context = context_ids.get(row, [])[: max(0, limit - pair_overhead - n_pieces)]
        if context:
            prefix, middle, suffix = specials.pair
            pre_t, mid_t, suf_t, a_type, b_type = specials.pair_types
            ids = prefix + flat_pieces + middle + context + suffix
            types = pre_t + [a_type] * n_pieces + mid_t + [b_type] * len(context) + suf_t
            windows = [(len(sequences), 0, n_pieces, len(prefix))]
            sequences.append((ids, types))
        else:
            prefix, suffix = specials.single
            pre_t, suf_t, a_type = specials.single_types
            width = limit - single_overhead
            windows = []
            for start in _window_starts(n_pieces, width, window_overlap):
                end = min(start + width, n_pieces)
                windows.append((len(sequences), start, end, len(prefix)))
                ids = prefix + flat_pieces[start:end] + suffix
                sequences.append((ids, pre_t + [a_type] * (end - start) + suf_t))
        coverage = numpy.zeros(n_pieces)
        for _, start, end, _ in windows:
            coverage[start:end] += 1
        for seq_index, start, end, offset in windows:
            piece_index = numpy.arange(start, end)[pooled[start:end]]
            token = piece_token[piece_index]
            sources.append((seq_index, offset + piece_index - start))
            targets.append(token_offset + token)
            weights.append(1.0 / (coverage[piece_index] * n_pooled[token]))
        token_offset += len(pieces)

    uses_types = "token_type_ids" in tokenizer.model_input_names
    as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
    chunks, flat_start = [], {}
    for chunk in _length_chunks([len(ids) for ids, _ in sequences]):
        width = len(sequences[chunk[0]][0])
        input_ids = numpy.full((len(chunk), width), tokenizer.pad_token_id or 0)
        type_ids = numpy.zeros((len(chunk), width), dtype=numpy.int64)
        attention = numpy.zeros((len(chunk), width), dtype=numpy.int64)
        for row, seq_index in enumerate(chunk):
            ids, types = sequences[seq_index]
            input_ids[row, : len(ids)] = ids
            type_ids[row, : len(ids)] = types
            attention[row, : len(ids)] = 1
            flat_start[seq_index] = sum(c[0].size for c in chunks) + row * width
        chunks.append((input_ids, attention, type_ids))
    flat_sources = numpy.concatenate([flat_start[seq] + pos for seq, pos in sources])
    return {
        "input_ids": [as_long(ids) for ids, _, _ in chunks],
        "attention_mask": [as_long(mask) for _, mask, _ in chunks],
        "token_type_ids": [as_long(types) for _, _, types in chunks] if uses_types else None,
        "pool_source": as_long(flat_sources),
        "pool_target": as_long(numpy.concatenate(targets)),
        "pool_weight": torch.as_tensor(
            numpy.concatenate(weights), dtype=torch.float32, device=device
        ),
        "n_tokens": token_offset,
    }


def _length_chunks(lengths: List[int]) -> List[List[int]]:
    """Group sequence indices, longest first, into encoder batches of similar
    length holding at most CHUNK_TOKENS padded positions (or one sequence).

    Padding short text-only sequences to the length of cross-modal ones would
    waste compute, and one huge batch for a very long post would waste memory.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    chunks: List[List[int]] = []
    for index in order:
        if chunks and (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= CHUNK_TOKENS:
            chunks[-1].append(index)
        else:
            chunks.append([index])
    return chunks


def _window_starts(n_pieces: int, width: int, overlap: int) -> List[int]:
    """Start offsets of windows of `width` subwords covering `n_pieces`, each
    sharing `overlap` subwords (at most half a window) with the previous one."""
    if n_pieces <= width:
        return [0]
    stride = max(1, width - min(overlap, width // 2))
    starts = list(range(0, n_pieces - width + 1, stride))
    if starts[-1] + width < n_pieces:
        starts.append(n_pieces - width)
    return starts

