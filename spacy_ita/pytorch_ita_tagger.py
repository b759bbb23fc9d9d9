"""The PyTorch side of the tagger: encoder -> token pooling (+ token features) ->
emissions, plus the CRF.

The module also carries the Hugging Face tokenizer (a plain attribute, not a
parameter) so that one object holds everything needed to serialise and rebuild
the model without a network.
"""
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any, List, Optional

import srsly
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .crf import LinearChainCRF
from .encoder_inputs import EncoderBatch
from .precision import encoder_autocast
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

    def forward(self, batch: EncoderBatch) -> torch.Tensor:
        """Emissions `(n_tokens, n_tags)`, fp32, for all spaCy tokens of the batch.

        The encoder runs once per chunk of similar-length sequences; token
        vectors are pooled from the subword vectors as the batch's pooling
        index says (see `EncoderBatch`). The encoder alone runs in the
        precision of the current `precision.encoder_precision` context.
        """
        added = self._encoder_input_additions(batch)
        outputs = []
        # One autocast for all chunks: it casts each weight to bf16 once per batch.
        with encoder_autocast(self.emission.weight.device):
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


def serialize_module(module: ItaTaggerModule) -> bytes:
    """Encoder config, tokenizer files, token-feature settings and all weights,
    in one msgpack blob."""
    with tempfile.TemporaryDirectory() as tmp:
        module.tokenizer.save_pretrained(tmp)
        tokenizer_files = {
            path.name: path.read_bytes() for path in Path(tmp).iterdir() if path.is_file()
        }
    weights = BytesIO()
    torch.save(module.state_dict(), weights)
    return srsly.msgpack_dumps(
        {
            "encoder_config": module.encoder.config.to_dict(),
            "tokenizer": tokenizer_files,
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


def deserialize_module(
    data: bytes, dropout: float, device: torch.device
) -> ItaTaggerModule:
    """Rebuild the module from `serialize_module` output, offline.

    Weights are read with `weights_only=True`: a pipeline directory is data,
    and must not be able to run code when loaded.
    """
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
    with tempfile.TemporaryDirectory() as tmp:
        srsly.write_json(Path(tmp) / "config.json", encoder_config)
        config = AutoConfig.from_pretrained(tmp)
        for name, content in tokenizer_files.items():
            (Path(tmp) / name).write_bytes(content)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    module = ItaTaggerModule(
        AutoModel.from_config(config), tokenizer, n_tags, dropout,
        features=None if features is None else TokenFeatureEmbedding(**features),
    )
    try:
        state = torch.load(BytesIO(state_bytes), map_location=device, weights_only=True)
        module.load_state_dict(state)
    except Exception as err:
        raise ValueError(f"Could not load the ita_ner model weights: {err}") from None
    return module.to(device)
