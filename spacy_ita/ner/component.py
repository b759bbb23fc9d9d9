"""The `ita_ner` component: a transformer-CRF entity tagger that reads visual context.

Training runs two views of each post through one transformer: the sentence
alone (text-only) and the sentence followed by its visual context
(cross-modal), combining their CRF losses with Cross-View Alignment (see
`loss.ItaLoss`). At inference one view per doc is used: cross-modal when the
doc has visual context, text-only when it has none (`view = "auto"`).
"""
import copy
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy
from spacy import util
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example, validate_examples, validate_get_examples
from thinc.api import Config, Model, set_dropout_rate
from thinc.types import Floats2d, Ints1d

from ..files import replace_file, replace_json
from ..knowledge.mentions import matched_mentions, parse_mentions, render_mentions
from ..visual_context import DEFAULT_ORDER, FIELDS, get_visual_context
from .inputs import TaggerInput
from .loss import ItaLoss, ViewScores
from .model import ItaTaggerModel, ScoreGradient
from .precision import check_precision, effective_precision, encoder_precision
from .tag_scheme import allowed_moves, check_scheme, gold_tags, make_tags, tags_to_spans
from .views import VIEWS

KNOWLEDGE_FORMS = ("mentions", "text")
UNMATCHED_KNOWLEDGE = ("keep", "drop")

DEFAULT_MODEL_CONFIG = """
[model]
@architectures = "spacy-ita.ItaTagger.v2"
pooling = "first"
dropout = 0.1
max_length = 512
window_overlap = 128
shape_width = 16
mention_width = 16
mention_type_words = 64
shape_place = "emission"
mention_place = "emission"

[model.name]
@misc = "spacy-ita.bundled_encoder.v1"
"""
DEFAULT_MODEL = Config().from_str(DEFAULT_MODEL_CONFIG)["model"]


@Language.factory(
    "ita_ner",
    assigns=["doc.ents", "token.ent_iob", "token.ent_type"],
    requires=["doc._.visual_context"],
    default_config={
        "model": DEFAULT_MODEL,
        "tag_scheme": "BIO",
        "view": "auto",
        "precision": "auto",
        "use_context": True,
        "context_order": list(DEFAULT_ORDER),
        "context_separator": " ",
        "knowledge_form": "mentions",
        "unmatched_knowledge": "drop",
        "loss": {"@losses": "spacy-ita.ita_loss.v1"},
        "head_lr_scale": 1.0,
        "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    },
    default_score_weights={
        "ents_f": 1.0,
        "ents_p": 0.0,
        "ents_r": 0.0,
        "ents_per_type": None,
    },
)
def make_ita_ner(
    nlp: Language,
    name: str,
    model: Model,
    tag_scheme: str,
    view: str,
    precision: str,
    use_context: bool,
    context_order: List[str],
    context_separator: str,
    knowledge_form: str,
    unmatched_knowledge: str,
    loss: ItaLoss,
    head_lr_scale: float,
    scorer: Optional[Callable],
) -> "ItaNer":
    """Create an ita_ner component.

    tag_scheme: "BIO" or "BILUO". view: "auto", "cross" or "text" at inference.
    precision: the encoder's, in training and inference: "bf16" (autocast),
    "fp32", or "auto": bf16 where the device has it natively, else fp32.
    use_context: False trains and runs a text-only baseline that ignores context.
    context_order / context_separator: how Doc._.visual_context becomes text.
    knowledge_form: "mentions" reads only the entity mentions (and their types)
    out of the knowledge field, "text" appends it as it is.
    unmatched_knowledge: "drop" keeps only the knowledge's mentions found in the
    post (and drops knowledge that names none of its tokens, which is about
    something else), "keep" keeps them all.
    head_lr_scale: learning rate of the head (emission layer, token features,
    CRF), as a multiple of the encoder's (the optimizer's own rate).
    """
    return ItaNer(
        nlp.vocab,
        model,
        name,
        tag_scheme=tag_scheme,
        view=view,
        precision=precision,
        use_context=use_context,
        context_order=context_order,
        context_separator=context_separator,
        knowledge_form=knowledge_form,
        unmatched_knowledge=unmatched_knowledge,
        loss=loss,
        head_lr_scale=head_lr_scale,
        scorer=scorer,
    )


def _check_label(label: str) -> None:
    if not isinstance(label, str) or not label.strip() or label != label.strip() or "-" in label[:1]:
        raise ValueError(f"Invalid entity label {label!r}")


@dataclass(frozen=True)
class ViewPlan:
    """The inputs of a training batch's forward pass, text-only views first,
    and which doc each belongs to: the first len(text_rows) inputs are the
    text-only views of the docs text_rows names, the rest the cross-modal views
    of the docs cross_rows names."""

    inputs: List[TaggerInput]
    text_rows: List[int]
    cross_rows: List[int]

    def scored(self, scores: List[Floats2d]) -> ViewScores:
        """The plan with the forward pass's scores, one per input, for the loss."""
        return ViewScores(self.text_rows, self.cross_rows, scores)


class ItaNer(TrainablePipe):
    """Named entities from a transformer-CRF over the text plus its visual context."""

    def __init__(
        self,
        vocab,
        model: ItaTaggerModel,
        name: str = "ita_ner",
        *,
        tag_scheme: str = "BIO",
        view: str = "auto",
        precision: str = "auto",
        use_context: bool = True,
        context_order: Sequence[str] = DEFAULT_ORDER,
        context_separator: str = " ",
        knowledge_form: str = "mentions",
        unmatched_knowledge: str = "keep",
        loss: Optional[ItaLoss] = None,
        head_lr_scale: float = 1.0,
        scorer: Optional[Callable] = None,
    ):
        check_scheme(tag_scheme)
        if head_lr_scale <= 0:
            raise ValueError(f"head_lr_scale must be > 0, got {head_lr_scale}")
        unknown = [field for field in context_order if field not in FIELDS]
        if unknown:
            raise ValueError(f"Unknown context_order field(s) {unknown}; expected {FIELDS}")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.tag_scheme = tag_scheme
        self.view = view
        self.precision = precision
        self.use_context = use_context
        self.context_order = list(context_order)
        self.context_separator = context_separator
        if knowledge_form not in KNOWLEDGE_FORMS:
            raise ValueError(
                f"Unknown knowledge_form {knowledge_form!r}; expected one of {KNOWLEDGE_FORMS}"
            )
        self.knowledge_form = knowledge_form
        if unmatched_knowledge not in UNMATCHED_KNOWLEDGE:
            raise ValueError(
                f"Unknown unmatched_knowledge {unmatched_knowledge!r}; expected one of "
                f"{UNMATCHED_KNOWLEDGE}"
            )
        self.unmatched_knowledge = unmatched_knowledge
        self.loss = loss if loss is not None else ItaLoss()
        self.head_lr_scale = head_lr_scale
        self.scorer = scorer
        self.cfg = {"labels": []}
        self._warned_image_without_context = False

    @property
    def view(self) -> str:
        return self._view

    @view.setter
    def view(self, value: str) -> None:
        if value not in VIEWS:
            raise ValueError(f"Unknown ita_ner view {value!r}; expected one of {VIEWS}")
        self._view = value

    @property
    def precision(self) -> str:
        """The encoder's precision setting: "auto", "bf16" or "fp32"."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        self._precision = check_precision(value, self.name)

    @property
    def precision_in_effect(self) -> str:
        """"bf16" or "fp32": what the setting means on the model's device."""
        return effective_precision(self.precision, self.model.device)

    @property
    def labels(self) -> Tuple[str, ...]:
        return tuple(self.cfg["labels"])

    @property
    def label_data(self) -> List[str]:
        return list(self.labels)

    @property
    def tags(self) -> List[str]:
        return make_tags(self.labels, self.tag_scheme)

    def add_label(self, label: str) -> int:
        _check_label(label)
        if label in self.labels:
            return 0
        if self.model.is_initialized:
            raise ValueError(
                f"Cannot add label {label!r} to an initialised ita_ner: its CRF is "
                "sized for the existing labels. Re-initialise with all labels."
            )
        self.cfg["labels"].append(label)
        self.vocab.strings.add(label)
        return 1

    def initialize(
        self,
        get_examples: Callable[[], Iterable[Example]],
        *,
        nlp: Optional[Language] = None,
        labels: Optional[Sequence[str]] = None,
    ) -> None:
        """Collect the entity labels from the examples (with those added by
        `add_label` before a first initialize), or take `labels`, and load the
        pretrained encoder with a CRF sized for them. Again on an initialised
        component, it starts afresh; if it fails, the component is as it was."""
        if labels is None:
            validate_get_examples(get_examples, "ItaNer.initialize")
            added = [] if self.model.is_initialized else self.cfg["labels"]
            labels = sorted(
                {*added, *(ent.label_ for eg in get_examples() for ent in eg.reference.ents)}
            )
        if not labels:
            raise ValueError(
                "ita_ner found no entity labels: the training examples have no "
                "entities and no labels were given to initialize."
            )
        for label in labels:
            _check_label(label)
            self.vocab.strings.add(label)
        before = (list(self.cfg["labels"]), dict(self.model.attrs),
                  self.model.maybe_get_dim("nO"))
        try:
            self.cfg["labels"] = list(dict.fromkeys(labels))
            self.model.set_dim("nO", len(self.tags), force=True)
            # Saved with the weights, so a cfg with other labels cannot load them.
            self.model.attrs["tags"] = list(self.tags)
            self.model.attrs["allowed_moves"] = [
                move.tolist() for move in allowed_moves(self.tags, self.tag_scheme)
            ]
            # The training inputs' knowledge mentions give the model its type words.
            examples = get_examples() if self.use_context else []
            cross = [self.cross_input(eg.predicted, i) for i, eg in enumerate(examples)]
            self.model.initialize(X=[item for item in cross if item is not None])
        except BaseException:
            self.cfg["labels"], attrs, n_out = before
            self.model.attrs.clear()
            self.model.attrs.update(attrs)
            if n_out is not None:
                self.model.set_dim("nO", n_out, force=True)
            raise

    def to_disk(self, path, *, exclude=tuple()):
        """As TrainablePipe.to_disk, but the weights file is replaced atomically
        (written next to it, then renamed): a process killed while saving, as
        `spacy train` can be at a checkpoint, leaves the previous weights whole
        instead of a truncated file that no longer loads."""
        serialize = {
            "cfg": lambda p: replace_json(p, self.cfg),
            "vocab": lambda p: self.vocab.to_disk(p, exclude=exclude),
            "model": lambda p: replace_file(p, self.model.to_bytes()),
        }
        util.to_disk(path, serialize, exclude)

    def from_bytes(self, bytes_data, *, exclude=tuple()):
        load = super().from_bytes
        return self._load(lambda: load(bytes_data, exclude=exclude), "its serialised data")

    def from_disk(self, path, *, exclude=tuple()):
        load = super().from_disk
        return self._load(lambda: load(path, exclude=exclude), f"{path} (its 'cfg' or 'model' file)")

    def _load(self, load: Callable[[], object], source: str) -> "ItaNer":
        """Run a TrainablePipe loader; the msgpack/JSON errors of truncated or
        foreign data become one error naming the source, and the weights must
        fit the labels. An untrained pipe (saved before initialize) has no
        weights: it loads untrained, to be initialised."""
        cfg = copy.deepcopy(self.cfg)
        try:
            load()
        except ValueError as err:
            self.cfg.clear()
            self.cfg.update(cfg)  # the cfg loads first: it would not fit the weights kept
            raise ValueError(
                f"{self.name}: cannot load {source}: it is truncated, corrupt or not "
                f"from ita_ner ({type(err).__name__}: {err})"
            ) from err
        if self.model.is_initialized:
            self._check_weights_match_labels()
        return self

    def _check_weights_match_labels(self) -> None:
        n_weights = self.model.n_scored_tags
        trained_tags = self.model.attrs.get("tags")  # None for pipelines saved before
        if n_weights != len(self.tags) or (
            trained_tags is not None and list(trained_tags) != self.tags
        ):
            trained = "" if trained_tags is None else f" {list(trained_tags)}"
            raise ValueError(
                f"{self.name}: the saved weights score {n_weights} tags{trained}, but the "
                f"labels {list(self.labels)} with scheme {self.tag_scheme} make "
                f"{len(self.tags)} {self.tags}. "
                "The pipeline's cfg and model files do not belong together."
            )

    def cross_input(self, doc: Doc, index: int = 0) -> Optional[TaggerInput]:
        """What the cross-modal view reads for a doc: the doc with its rendered
        context and the knowledge mentions kept, or None when it has no context
        (its cross-modal view is then its text-only view). `index` names the
        doc in warnings and errors."""
        context = get_visual_context(doc, index)
        if context is None:
            if (
                doc._.image is not None
                and doc._.image_error is None
                and not self._warned_image_without_context
            ):
                warnings.warn(
                    f"Doc {index} has Doc._.image but no Doc._.visual_context, so "
                    f"{self.name} ignores the image. Add the ita_context component "
                    f"before {self.name} to turn images into context."
                )
                self._warned_image_without_context = True
            return None
        mentions = tuple(
            dict.fromkeys(m for item in context.knowledge for m in parse_mentions(item))
        )
        if self.unmatched_knowledge == "drop":
            mentions = tuple(matched_mentions([token.text for token in doc], mentions))
            if not mentions:  # knowledge about something else: not this post's
                context = replace(context, knowledge=[])
        if self.knowledge_form == "mentions":
            context = replace(context, knowledge=[render_mentions(mentions)] if mentions else [])
        text = context.render(self.context_order, " ", self.context_separator)
        return TaggerInput(doc, text, mentions) if text else None

    def inputs(self, docs: Sequence[Doc]) -> List[TaggerInput]:
        """What `predict` reads for each doc in the current view: its cross
        input (see `cross_input`), or the doc alone (`context` None) in the
        text view or when no context is left."""
        if not self.use_context or self.view == "text":
            return [TaggerInput(doc) for doc in docs]
        return [self.cross_input(doc, i) or TaggerInput(doc) for i, doc in enumerate(docs)]

    def views(self, docs: Sequence[Doc]) -> List[str]:
        """The view `predict` uses for each doc: "cross" when it reads the doc
        with context, else "text" (knowledge that names nothing in the post is
        dropped, so such a doc is "text"). A tagged doc keeps its view in
        `Doc._.ita_view`."""
        return _views(self.inputs(docs))

    def predict(self, docs: Iterable[Doc]) -> "Tagging":
        """Tag indices per token, by constrained Viterbi over one view per doc,
        and the view of each doc."""
        docs = list(docs)
        inputs = self.inputs(docs)
        if not any(len(doc) for doc in docs):
            return Tagging([[] for _ in docs], _views(inputs))
        with encoder_precision(self.precision):
            scores = self.model.predict(inputs)
        return Tagging(self.model.decode(scores), _views(inputs))

    def set_annotations(self, docs: Iterable[Doc], tagging: "Tagging") -> None:
        tags = self.tags
        for doc, ids, view in zip(docs, tagging.tag_ids, tagging.views):
            spans = tags_to_spans(doc, [tags[i] for i in ids], self.tag_scheme)
            doc.set_ents(spans, default="outside")
            doc._.ita_view = view

    def plan_views(self, docs: Sequence[Doc]) -> ViewPlan:
        """The views a training batch encodes, text-only first (see ViewPlan).

        A doc without context has identical views, so it is encoded once and
        its text-only scores stand in for its cross-modal ones.
        """
        cross = (
            [self.cross_input(doc, i) for i, doc in enumerate(docs)]
            if self.use_context
            else [None] * len(docs)
        )
        cross_rows = [i for i, item in enumerate(cross) if item is not None]
        if not self.use_context or self.loss.needs_text_view:
            text_rows = list(range(len(docs)))
        else:
            text_rows = [i for i, item in enumerate(cross) if item is None]
        inputs = [TaggerInput(docs[i]) for i in text_rows] + [cross[i] for i in cross_rows]
        return ViewPlan(inputs, text_rows, cross_rows)

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd=None,
        losses=None,
    ):
        losses = {} if losses is None else losses
        losses.setdefault(self.name, 0.0)
        examples = [eg for eg in examples if len(eg.predicted)]
        validate_examples(examples, "ItaNer.update")
        if not examples:
            return losses
        set_dropout_rate(self.model, drop)
        docs = [eg.predicted for eg in examples]
        plan = self.plan_views(docs)
        with encoder_precision(self.precision):
            scores, backprop = self.model.begin_update(plan.inputs)
        loss, gradient = self.get_loss(examples, plan.scored(scores))
        backprop(gradient)
        if sgd is not None:
            self.finish_update(sgd)
        losses[self.name] += loss
        return losses

    def finish_update(self, sgd) -> None:
        """Apply the gradients; the head (all but the pretrained encoder, see
        ItaTaggerModel.head_parameter_names) learns at head_lr_scale times the
        encoder's rate."""
        self.model.finish_update(sgd, head_lr_scale=self.head_lr_scale)

    def get_loss(
        self, examples: Sequence[Example], scores: ViewScores
    ) -> Tuple[float, ScoreGradient]:
        """ITA's loss over a batch (mean per doc) and its gradient, which `update`
        passes back through the model; nothing is accumulated here."""
        gold = [self._gold_tag_ids(i, eg) for i, eg in enumerate(examples)]
        return self.model.loss_and_gradient(self.loss, self.use_context, scores, gold)

    def _gold_tag_ids(self, doc_index: int, eg: Example) -> Ints1d:
        """Gold tag indices of a training example; -1 where the gold is unknown."""
        tag_index = {tag: i for i, tag in enumerate(self.tags)}
        ids = []
        for tag in gold_tags(eg, self.tag_scheme):
            if tag is not None and tag not in tag_index:
                raise ValueError(
                    f"Training example {doc_index} ({eg.reference.text[:40]!r}) has "
                    f"entity tag {tag!r}, but {self.name} was initialised with labels "
                    f"{list(self.labels)}. Initialise on data that has every label."
                )
            ids.append(-1 if tag is None else tag_index[tag])
        return numpy.array(ids, dtype=numpy.int64)


@dataclass
class Tagging:
    """What `predict` found for a batch: tag indices per token, and the view
    each doc was read with (set as `Doc._.ita_view`)."""

    tag_ids: List[List[int]]
    views: List[str]


def _views(inputs: Sequence[TaggerInput]) -> List[str]:
    return ["text" if item.context is None else "cross" for item in inputs]
