"""The thinc model `spacy-ita.ItaTagger.v2`: TaggerInputs -> emission scores.

Each input is a Doc, an optional context string and the mentions its
knowledge names (see `inputs` for how they become encoder sequences,
`token_features` for the learned per-token signals v2 adds beside the
encoder). Only the sentence's tokens get scores. The CRF that turns scores
into tags lives in the same torch module. `ItaTaggerModel`, the thinc model
the architecture returns, is the only way into that module: the component
decodes, computes the loss, and scales the head's learning rate through it,
and never touches torch.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import torch
from spacy.util import registry
from thinc.api import (
    ArgsKwargs,
    Model,
    Optimizer,
    PyTorchWrapper_v3,
    get_torch_default_device,
    torch2xp,
    xp2torch,
)
from thinc.shims import PyTorchShim
from thinc.types import Floats2d, FloatsXd, Ints1d

from .crf import pad_sequences
from .encoders import prepare_encoder
from .inputs import POOLINGS, EncoderBatch, TaggerInput, encode
from .loss import ItaLoss, ViewScores, crf_loss_terms
from .token_features import (
    PLACES,
    TokenFeatureEmbedding,
    build_type_vocabulary,
    featurize,
)
from .torch_module import (
    ItaTaggerModule,
    deserialize_module,
    load_pretrained,
    serialize_module,
)


@dataclass
class ScoreGradient:
    """What the loss sends back through the tagger: the gradient of each
    emission score row, and of the CRF's own parameters (by name), as arrays.

    The CRF's parameters are the loss's, not the forward pass's, but they live
    in the tagger's torch module: their gradient travels back with the scores'
    and thinc's torch shim accumulates it with all the others.
    """

    d_scores: List[Floats2d]
    d_crf: Dict[str, FloatsXd]


class ItaTaggerModel(Model):
    """The tagger's thinc model and the only way into its torch module: the
    module itself, Viterbi decoding, the loss and its gradient, and the head's
    learning rate. Nothing else reaches into the torch shim."""

    __slots__ = ()  # thinc's Model has slots; the same layout lets _copy keep the class

    @property
    def is_initialized(self) -> bool:
        return self._shim._model is not None

    @property
    def module(self) -> ItaTaggerModule:
        """The PyTorch module of an initialised tagger."""
        if not self.is_initialized:
            raise ValueError(
                "The ita_ner model is not initialised: call nlp.initialize() or load a "
                "trained pipeline first."
            )
        return self._shim._model

    @property
    def device(self) -> torch.device:
        """Where the tagger's weights are, or will be once initialised."""
        if self.is_initialized:
            return self.module.emission.weight.device
        return get_torch_default_device()

    @property
    def n_scored_tags(self) -> int:
        """How many tags the saved or initialised weights score."""
        return self.module.emission.out_features

    @property
    def head_parameter_names(self) -> FrozenSet[str]:
        """The torch parameters outside the pretrained encoder (emission layer,
        token features, CRF), all randomly initialised: the head."""
        encoder = {id(parameter) for parameter in self.module.encoder.parameters()}
        return frozenset(
            name for name, parameter in self.module.named_parameters()
            if id(parameter) not in encoder
        )

    def decode(self, scores: Sequence[Floats2d]) -> List[List[int]]:
        """The best allowed tag sequence per doc (constrained Viterbi)."""
        emissions, mask = pad_sequences([xp2torch(s) for s in scores])
        with torch.no_grad():
            return self.module.crf.decode(emissions, mask)

    def loss_and_gradient(
        self, loss: ItaLoss, use_context: bool, views: ViewScores, gold: Sequence[Ints1d]
    ) -> Tuple[float, ScoreGradient]:
        """The mean loss per doc of a batch and its ScoreGradient, without side
        effects: gradients are returned, never accumulated into the parameters.

        gold holds each doc's tag indices, -1 where the gold tag is unknown.
        """
        crf = self.module.crf
        rows = [xp2torch(s, requires_grad=True) for s in views.scores]
        terms = crf_loss_terms(crf, loss, use_context, views, rows, gold)
        total = sum(terms.values()) / len(gold)
        parameters = dict(crf.named_parameters())
        grads = torch.autograd.grad(total, rows + list(parameters.values()), allow_unused=True)
        d_scores = [
            torch2xp(grad) if grad is not None else self.ops.alloc2f(*row.shape)
            for row, grad in zip(rows, grads)
        ]
        d_crf = {
            name: torch2xp(grad)
            for name, grad in zip(parameters, grads[len(rows):]) if grad is not None
        }
        return total.item(), ScoreGradient(d_scores, d_crf)

    def finish_update(self, optimizer: Optimizer, head_lr_scale: float = 1.0) -> None:
        """Apply the gradients; the head (see head_parameter_names) learns at
        head_lr_scale times the optimizer's rate."""
        if head_lr_scale != 1.0:
            head = {(self._shim.id, name) for name in self.head_parameter_names}
            optimizer = _KeyScaledOptimizer(optimizer, head, head_lr_scale)
        super().finish_update(optimizer)
        if self.is_initialized:
            # thinc's shim steps through numpy, in place: torch sees no change.
            self.module.forget_inference_weights()

    @contextmanager
    def use_params(self, params: Dict[Tuple[int, str], FloatsXd]) -> Iterator[None]:
        """The torch weights set to `params` (the optimizer's averages) for a while.

        thinc's optimizer keys a torch weight `(shim id, name)`, but its torch
        shim looks them up under other keys, so `use_averages` would evaluate
        and save the raw weights: the averages are swapped in here.
        """
        shim_id = self._shim.id
        named = dict(self.module.named_parameters()) if self.is_initialized else {}
        swapped = {name: named[name] for name in named if (shim_id, name) in params}
        backup = {name: weight.detach().clone() for name, weight in swapped.items()}
        with torch.no_grad():  # in place: the kept bf16 weights see the change
            for name, weight in swapped.items():
                weight.copy_(xp2torch(params[(shim_id, name)]))
        try:
            with super().use_params(params):
                yield
        finally:
            with torch.no_grad():
                for name, weight in swapped.items():
                    weight.copy_(backup[name])

    def _copy(self, seen=None) -> "ItaTaggerModel":
        """thinc's copy builds a plain Model; this class adds only methods (and
        no slots), so the copy takes it over."""
        copied = super()._copy(seen)
        copied.__class__ = ItaTaggerModel
        return copied

    @property
    def _shim(self) -> PyTorchShim:
        return self.layers[0].shims[0]


class _KeyScaledOptimizer:
    """An optimizer seen through a learning-rate multiplier for some parameter
    keys (thinc's PyTorchShim names a torch parameter `(shim id, name)`)."""

    def __init__(self, optimizer: Optimizer, keys: set, lr_scale: float):
        self._optimizer = optimizer
        self._keys = keys
        self._lr_scale = lr_scale

    def __call__(self, key, weights, gradient, *, lr_scale: float = 1.0):
        if key in self._keys:
            lr_scale *= self._lr_scale
        return self._optimizer(key, weights, gradient, lr_scale=lr_scale)

    def __getattr__(self, name):
        return getattr(self._optimizer, name)


@registry.architectures("spacy-ita.ItaTagger.v2")
def build_ita_tagger(
    name: str,
    pooling: str = "first",
    dropout: float = 0.1,
    max_length: int = 512,
    window_overlap: int = 128,
    shape_width: int = 16,
    mention_width: int = 16,
    mention_type_words: int = 64,
    shape_place: str = "emission",
    mention_place: str = "emission",
    tokenizer_config: Dict = {},
    transformer_config: Dict = {},
    nO: Optional[int] = None,
) -> "ItaTaggerModel":
    """name: a Hugging Face model name or a local path (see spacy-ita.bundled_encoder.v1).
    pooling: "first" subword or "mean" of subwords per spaCy token.
    max_length: longest sequence given to the encoder (capped by the encoder's own limit).
    window_overlap: subwords shared by consecutive windows of a long sentence.
    shape_width / mention_width: sizes of the learned token-shape and
    knowledge-mention vectors next to the encoder's (0: off).
    mention_type_words: how many of the training data's type words get a vector.
    shape_place / mention_place: "emission" (next to the encoder's output) or
    "encoder" (added to the input embeddings of the subwords the token is
    pooled from: its first under "first" pooling, all under "mean"; the width
    then follows the encoder's hidden size, and 0 still switches it off).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; expected one of {POOLINGS}")
    if max_length < 8:
        raise ValueError(f"max_length must be at least 8, got {max_length}")
    for setting, value in (("shape_width", shape_width), ("mention_width", mention_width),
                           ("mention_type_words", mention_type_words)):
        if value < 0:
            raise ValueError(f"{setting} must be >= 0, got {value}")
    for setting, place in (("shape_place", shape_place), ("mention_place", mention_place)):
        if place not in PLACES:
            raise ValueError(f"Unknown {setting} {place!r}; expected one of {PLACES}")
    torch_layer = PyTorchWrapper_v3(
        None,
        convert_inputs=_convert_inputs,
        convert_outputs=_convert_outputs,
        serialize_model=serialize_module,
        deserialize_model=lambda _, data, device: deserialize_module(data, dropout, device),
    )
    return ItaTaggerModel(
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
            "shape_width": shape_width,
            "mention_width": mention_width,
            "mention_type_words": mention_type_words,
            "shape_place": shape_place,
            "mention_place": mention_place,
            "tokenizer_config": dict(tokenizer_config),
            "transformer_config": dict(transformer_config),
            "allowed_moves": None,
        },
    )


@registry.architectures("spacy-ita.ItaTagger.v1")
def build_ita_tagger_v1(
    name: str,
    pooling: str = "first",
    dropout: float = 0.1,
    max_length: int = 512,
    window_overlap: int = 128,
    tokenizer_config: Dict = {},
    transformer_config: Dict = {},
    nO: Optional[int] = None,
) -> "ItaTaggerModel":
    """The encoder's vectors alone, without v2's token features: the
    architecture of pipelines trained before them, which load unchanged."""
    return build_ita_tagger(
        name, pooling, dropout, max_length, window_overlap, shape_width=0, mention_width=0,
        tokenizer_config=tokenizer_config, transformer_config=transformer_config, nO=nO,
    )


def _init(model: ItaTaggerModel, X: Optional[List[TaggerInput]] = None, Y=None) -> None:
    """Load the pretrained encoder (from the hub or a local path) and size the
    head; the mentions' type words in X (the training inputs) make the vocabulary
    of the mention vectors."""
    if model.get_dim("nO") is None:
        raise ValueError("ItaTagger needs nO (the number of tags) before initialisation")
    tokenizer, encoder = load_pretrained(
        prepare_encoder(model.attrs["name"]),
        model.attrs["tokenizer_config"],
        model.attrs["transformer_config"],
    )
    if not tokenizer.is_fast:
        raise ValueError(f"ita_ner needs a fast tokenizer; {model.attrs['name']} has none")
    moves = model.attrs["allowed_moves"]
    shape_width, mention_width = model.attrs["shape_width"], model.attrs["mention_width"]
    features = None
    if shape_width or mention_width:
        mentions = (mention for item in X or [] for mention in item.mentions)
        vocabulary = build_type_vocabulary(mentions, model.attrs["mention_type_words"])
        shape_place, mention_place = model.attrs["shape_place"], model.attrs["mention_place"]
        hidden = encoder.config.hidden_size
        features = TokenFeatureEmbedding(
            hidden if shape_width and shape_place == "encoder" else shape_width,
            hidden if mention_width and mention_place == "encoder" else mention_width,
            vocabulary,
            shape_place,
            mention_place,
        )
    module = ItaTaggerModule(
        encoder,
        tokenizer,
        model.get_dim("nO"),
        model.attrs["dropout"],
        None if moves is None else tuple(torch.tensor(m) for m in moves),
        features,
    )
    model._shim._model = module.to(get_torch_default_device())


def _forward(model: ItaTaggerModel, inputs: List[TaggerInput], is_train: bool):
    torch_layer = model.layers[0]
    module = model.module
    lengths = [len(item.doc) for item in inputs]
    n_tags = module.emission.out_features
    if sum(lengths) == 0:
        empty = [model.ops.alloc2f(0, n_tags) for _ in inputs]
        return empty, lambda gradient: []
    batch = encode(
        module.tokenizer,
        inputs,
        sequence_limit(module, model.attrs["max_length"]),
        model.attrs["window_overlap"],
        model.attrs["pooling"],
        module.emission.weight.device,
    )
    if module.features is not None:
        batch.features = featurize(
            [(item.doc, item.mentions) for item in inputs],
            module.features.vocabulary,
            module.emission.weight.device,
        )
    if not is_train:
        scores = model.ops.unflatten(_predict(module, batch), model.ops.asarray1i(lengths))
        return scores, lambda gradient: []
    flat_scores, backprop_flat = torch_layer(batch, is_train)
    scores = model.ops.unflatten(flat_scores, model.ops.asarray1i(lengths))

    def backprop(gradient: ScoreGradient) -> List:
        crf_gradients = [
            (parameter, gradient.d_crf[name])
            for name, parameter in module.crf.named_parameters() if name in gradient.d_crf
        ]
        backprop_flat((model.ops.flatten(gradient.d_scores), crf_gradients))
        return []

    return scores, backprop


def _predict(module: ItaTaggerModule, batch: EncoderBatch) -> Floats2d:
    """Inference scores, with the module held in eval mode until the next
    update (thinc's shim puts every submodule into eval mode and back on each
    call) and no autograd."""
    if module.training:
        module.eval()
    with torch.no_grad():
        return torch2xp(module(batch))


def sequence_limit(module: ItaTaggerModule, max_length: int) -> int:
    """The longest encoder sequence: max_length, capped by the encoder's own limits."""
    limits = [max_length, module.tokenizer.model_max_length]
    positions = getattr(module.encoder.config, "max_position_embeddings", None)
    if positions:
        limits.append(positions)
    return min(limits)


def _convert_inputs(model: Model, batch: EncoderBatch, is_train: bool):
    return ArgsKwargs(args=(batch,), kwargs={}), lambda d_inputs: []


def _convert_outputs(model: Model, inputs_outputs, is_train: bool):
    _, scores = inputs_outputs

    def backprop(
        gradient: Tuple[Floats2d, List[Tuple[torch.nn.Parameter, FloatsXd]]]
    ) -> ArgsKwargs:
        """The torch shim's backward from the scores' gradient and the CRF
        parameters' own (a parameter given as a root just accumulates its grad)."""
        d_scores, crf_gradients = gradient
        tensors = [scores] + [parameter for parameter, _ in crf_gradients]
        grads = [xp2torch(d_scores, device=scores.device)] + [
            xp2torch(grad, device=parameter.device) for parameter, grad in crf_gradients
        ]
        return ArgsKwargs(args=(tensors,), kwargs={"grad_tensors": grads})

    return torch2xp(scores), backprop

