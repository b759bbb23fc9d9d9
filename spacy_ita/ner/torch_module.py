"""The PyTorch side of the tagger: encoder -> token pooling (+ token features) ->
emissions, plus the CRF.

The module also carries the Hugging Face tokenizer (a plain attribute, not a
parameter) so that one object holds everything needed to serialise and rebuild
the model without a network.
"""
import json
import tempfile
from contextlib import contextmanager, nullcontext
from io import BytesIO
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import srsly
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, SpecialTokensMixin

from .crf import LinearChainCRF
from .inputs import EncoderBatch
from .precision import Bf16LinearWeights, encoder_in_bf16
from .token_features import TokenFeatureEmbedding


class ItaTaggerModule(nn.Module):
    """Per-token emission scores from a transformer; the CRF scores tag sequences."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any,
        n_tags: int,
        dropout: float,
        allowed_moves: Optional[tuple] = None,
        features: Optional[TokenFeatureEmbedding] = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.dropout = nn.Dropout(dropout)
        self.features = features
        width = encoder.config.hidden_size + (features.width if features is not None else 0)
        self.emission = nn.Linear(width, n_tags)
        self.crf = LinearChainCRF(n_tags, *(allowed_moves or ()))
        self._bf16_weights = Bf16LinearWeights(encoder)

    def forward(self, batch: EncoderBatch) -> torch.Tensor:
        """Emissions `(n_tokens, n_tags)`, fp32, for all spaCy tokens of the batch.

        The encoder runs once per chunk of similar-length sequences; token
        vectors are pooled from the subword vectors as the batch's pooling
        index says (see `EncoderBatch`). The encoder alone runs in the
        precision of the current `precision.encoder_precision` context.
        """
        added = self._encoder_input_additions(batch)
        outputs = []
        with self._encoder_precision():
            for i, ids in enumerate(batch.input_ids):
                extra = ({} if batch.token_type_ids is None
                         else {"token_type_ids": batch.token_type_ids[i]})
                if added is None:
                    extra["input_ids"] = ids
                else:
                    embeddings = self.encoder.get_input_embeddings()(ids)
                    extra["inputs_embeds"] = embeddings + added[i].view_as(embeddings)
                hidden = self.encoder(attention_mask=batch.attention_mask[i], **extra)
                hidden = hidden.last_hidden_state
                outputs.append(hidden.reshape(-1, hidden.shape[-1]))
        # Back to fp32 after a bf16 encoder: the head, the CRF and the losses stay fp32.
        flat = torch.cat(outputs).float()
        tokens = flat.new_zeros((batch.n_tokens, flat.shape[-1]))
        tokens = tokens.index_add(
            0, batch.pool_target, flat[batch.pool_source] * batch.pool_weight[:, None]
        )
        if self.features is not None and self.features.width:
            tokens = torch.cat([tokens, self.features(batch.features)], dim=-1)
        return self.emission(self.dropout(tokens))

    def forget_inference_weights(self) -> None:
        """Drop the kept bf16 weights (after weights changed in a way torch
        does not see); the next bf16 inference makes them again."""
        self._bf16_weights.forget()

    @contextmanager
    def _encoder_precision(self) -> Iterator[None]:
        """The encoder's precision for this forward: fp32, or bf16 autocast, in
        inference with the kept bf16 copies of the linear weights (see
        `Bf16LinearWeights`). The copies are dropped where they cannot serve
        (fp32, training), so that they take no memory meanwhile."""
        device = self.emission.weight.device
        bf16 = encoder_in_bf16(device)
        keep = bf16 and not torch.is_grad_enabled()
        if not keep:
            self._bf16_weights.forget()
        with (self._bf16_weights.used() if keep else nullcontext()), \
                (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()):
            yield

    def _encoder_input_additions(self, batch: EncoderBatch) -> Optional[List[torch.Tensor]]:
        """Per chunk, what to add to the encoder's input embeddings: each token's
        encoder-side feature vectors at the subword positions it is pooled from;
        None when no feature goes into the encoder."""
        if self.features is None or not self.features.in_encoder:
            return None
        sizes = [ids.numel() for ids in batch.input_ids]
        vectors = self.features.encoder_vectors(batch.features)
        flat = vectors.new_zeros((sum(sizes), vectors.shape[-1]))
        flat = flat.index_add(0, batch.pool_source, vectors[batch.pool_target])
        return list(torch.split(flat, sizes))


def load_pretrained(
    source: str, tokenizer_config: Dict[str, Any], transformer_config: Dict[str, Any]
) -> Tuple[Any, nn.Module]:
    """The fast tokenizer and the encoder of a pretrained model (a hub name or a
    local folder), with transformers' public loaders; the configs' settings go
    to the tokenizer and to the encoder's config. Code the model names never
    runs, and no config may ask for it."""
    for what, settings in (("tokenizer_config", tokenizer_config),
                           ("transformer_config", transformer_config)):
        if "trust_remote_code" in settings:
            raise ValueError(
                f"[components.ita_ner.model.{what}] sets trust_remote_code: ita_ner "
                "never runs code a model names; remove the setting"
            )
    tokenizer = AutoTokenizer.from_pretrained(
        source, **{"use_fast": True, **tokenizer_config}, trust_remote_code=False
    )
    config = AutoConfig.from_pretrained(
        source, **{**transformer_config, "return_dict": True}, trust_remote_code=False
    )
    encoder = AutoModel.from_pretrained(source, config=config, trust_remote_code=False)
    return tokenizer, encoder


# The files a Hugging Face tokenizer's save_pretrained writes: its settings and
# special tokens, and the vocabulary files under the names transformers'
# tokenizer classes give them. A saved model's tokenizer is these files and
# nothing else; any other name, a path above all, is refused.
TOKENIZER_FILES = frozenset({
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
    "chat_template.jinja", "chat_template.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "sentencepiece.model", "tokenizer.model", "spm.model", "spm_char.model", "source.spm",
    "target.spm", "bpe.codes", "dict.txt", "normalizer.json", "entity_vocab.json",
    "vocab-src.json", "vocab-tgt.json", "target_vocab.json", "emoji.json", "byte_maps.json",
    "word_shape.json", "word_pronunciation.json",
})


def serialize_module(module: Optional[ItaTaggerModule]) -> Optional[bytes]:
    """Encoder config, tokenizer files, token-feature settings and all weights,
    in one msgpack blob; None while the tagger is untrained (no module yet: the
    thinc model's attrs hold all it needs to be initialised after loading)."""
    if module is None:
        return None
    weights = BytesIO()
    torch.save(module.state_dict(), weights)
    return srsly.msgpack_dumps(
        {
            "encoder_config": module.encoder.config.to_dict(),
            "tokenizer": _tokenizer_files(module.tokenizer),
            "n_tags": module.emission.out_features,
            "features": None if module.features is None else {
                "shape_width": module.features.shape_width,
                "mention_width": module.features.mention_width,
                "vocabulary": module.features.vocabulary,
                "shape_place": module.features.shape_place,
                "mention_place": module.features.mention_place,
            },
            "state": weights.getvalue(),
        }
    )


def _tokenizer_files(tokenizer: Any) -> Dict[str, bytes]:
    """The files `tokenizer.save_pretrained` writes, by name. A name outside
    TOKENIZER_FILES is an error now rather than a pipeline that cannot load."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {path.name: path.read_bytes() for path in Path(tmp).iterdir() if path.is_file()}
    unknown = sorted(set(files) - TOKENIZER_FILES)
    if unknown:
        raise ValueError(
            f"The tokenizer {tokenizer.name_or_path!r} saves files ita_ner cannot store "
            f"in a pipeline: {unknown}. It stores only {sorted(TOKENIZER_FILES)}."
        )
    _check_tokenizer_files(files)  # what loading would refuse fails now
    return files


def deserialize_module(
    data: Optional[bytes], dropout: float, device: torch.device
) -> Optional[ItaTaggerModule]:
    """Rebuild the module from `serialize_module` output, offline; None for an
    untrained tagger.

    A pipeline directory is data, and loading it must not run code or touch
    other files: weights are read with `weights_only=True`, the tokenizer
    files are written only into a temporary folder under the fixed names a
    tokenizer saves, configs that name other files (or tokenizer JSON files
    that set arguments other than special tokens) are refused, and
    transformers may not run code a config names (trust_remote_code=False).
    """
    if data is None:
        return None
    try:
        msg = srsly.msgpack_loads(data)
        encoder_config = msg["encoder_config"]
        tokenizer_files = msg["tokenizer"]
        n_tags = msg["n_tags"]
        features = msg.get("features")  # absent in models saved before token features
        state_bytes = msg["state"]
    except Exception as err:
        raise ValueError(
            f"The ita_ner model weights are unreadable (truncated or not an ita_ner "
            f"model file): {err}"
        ) from None
    _refuse_file_settings(encoder_config, "encoder config")
    _check_tokenizer_files(tokenizer_files)
    with tempfile.TemporaryDirectory() as tmp:
        srsly.write_json(Path(tmp) / "config.json", encoder_config)
        config = AutoConfig.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        for name, content in tokenizer_files.items():
            (Path(tmp) / name).write_bytes(content)
        tokenizer = AutoTokenizer.from_pretrained(
            tmp, local_files_only=True, trust_remote_code=False
        )
    module = ItaTaggerModule(
        AutoModel.from_config(config, trust_remote_code=False), tokenizer, n_tags, dropout,
        features=None if features is None else TokenFeatureEmbedding(**features),
    )
    try:
        state = torch.load(BytesIO(state_bytes), map_location=device, weights_only=True)
        module.load_state_dict(state)
    except Exception as err:
        raise ValueError(f"Could not load the ita_ner model weights: {err}") from None
    return module.to(device)


def _check_tokenizer_files(files: Any) -> None:
    """Refuse a saved tokenizer entry that is not a tokenizer file name (a path
    would write anywhere) or not bytes, and a JSON file whose keys transformers
    would pass to the tokenizer as arguments unless they are what a saved
    tokenizer holds there (see _JSON_CHECKS)."""
    if not isinstance(files, dict):
        raise ValueError("The ita_ner model's tokenizer is not a table of files")
    for name, content in files.items():
        if name not in TOKENIZER_FILES:
            raise ValueError(
                f"The ita_ner model's tokenizer has an entry {name!r}, which is not a "
                f"tokenizer file name: expected only names from {sorted(TOKENIZER_FILES)}"
            )
        if not isinstance(content, bytes):
            raise ValueError(f"The ita_ner model's tokenizer file {name!r} is not bytes")
    for name, check in _JSON_CHECKS.items():
        if name in files:
            try:
                content = json.loads(files[name])
            except ValueError as err:
                raise ValueError(f"The ita_ner model's {name} is not JSON: {err}") from None
            check(content, name)


def _refuse_file_settings(config: Any, what: str) -> None:
    """Refuse the settings with which transformers would read a file the config
    names (`*_file`, `*_files`) or load a pretrained backbone from elsewhere;
    save_pretrained never writes them. (Code named by `auto_map` never runs:
    the loaders get trust_remote_code=False.)"""
    if not isinstance(config, dict):
        raise ValueError(f"The ita_ner model's {what} is not a JSON object")
    refused = [
        key for key in config
        if key.endswith(("_file", "_files")) or (key == "use_pretrained_backbone" and config[key])
    ]
    if refused:
        raise ValueError(
            f"The ita_ner model's {what} has {refused}, which would make transformers "
            "read other files: a pipeline folder may not ask for that"
        )


# The fields of a special token written as an object (tokenizers' AddedToken).
_ADDED_TOKEN_FIELDS = frozenset({"content", "single_word", "lstrip", "rstrip", "normalized",
                                 "special"})


def _check_special_tokens_map(tokens: Any, what: str) -> None:
    """Refuse a special_tokens_map.json key other than a special-token
    attribute, or a value other than a token: transformers copies each key into
    the tokenizer's arguments, so `vocab_file` there would name any file."""
    if not isinstance(tokens, dict):
        raise ValueError(f"The ita_ner model's {what} is not a JSON object")
    for key, value in tokens.items():
        if key not in SpecialTokensMixin.SPECIAL_TOKENS_ATTRIBUTES:
            raise ValueError(
                f"The ita_ner model's {what} has {key!r}, which is not a special token: "
                f"it may hold only {SpecialTokensMixin.SPECIAL_TOKENS_ATTRIBUTES}"
            )
        many = key == "additional_special_tokens" and isinstance(value, list)
        if not all(map(_is_token, value if many else [value])):
            raise ValueError(
                f"The ita_ner model's {what} has {key!r} set to {json.dumps(value)[:80]}, "
                "which is not a token (a string or an object with a string 'content')"
            )


def _is_token(value: Any) -> bool:
    """A special token as special_tokens_map.json writes it: a string, or an
    AddedToken's fields with a string content and true/false options."""
    if isinstance(value, str):
        return True
    return (isinstance(value, dict) and isinstance(value.get("content"), str)
            and set(value) <= _ADDED_TOKEN_FIELDS
            and all(isinstance(value[field], bool) for field in set(value) - {"content"}))


def _check_added_tokens(tokens: Any, what: str) -> None:
    """Refuse an added_tokens.json that is not the map of token to id it always is."""
    ids = tokens.values() if isinstance(tokens, dict) else [None]
    if not all(isinstance(index, int) and not isinstance(index, bool) for index in ids):
        raise ValueError(f"The ita_ner model's {what} is not a JSON object of token ids")


# The JSON files transformers reads into a tokenizer's arguments (the other
# files are the tokenizer's own data), with what each may hold.
_JSON_CHECKS = {
    "tokenizer_config.json": _refuse_file_settings,
    "special_tokens_map.json": _check_special_tokens_map,
    "added_tokens.json": _check_added_tokens,
}
