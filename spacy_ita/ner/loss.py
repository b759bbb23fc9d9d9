"""ITA's training objective: CRF NLL on both views plus Cross-View Alignment."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from spacy.util import registry
from thinc.types import Floats2d, Ints1d

from .crf import LinearChainCRF, pad_sequences


def cva_divergence(
    cross_log_marginals: torch.Tensor,
    text_log_marginals: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """T^2 * sum over tokens of KL(softmax(m_cross/T) || softmax(m_text/T)), per sequence.

    The cross-modal side is detached: CVA teaches the text-only view to match
    the cross-modal one and never pulls the cross-modal view towards the text.
    """
    target = torch.log_softmax(cross_log_marginals.detach() / temperature, dim=-1)
    student = torch.log_softmax(text_log_marginals / temperature, dim=-1)
    kl = (target.exp() * (target - student)).sum(dim=-1)
    return temperature**2 * (kl * mask).sum(dim=1)


@dataclass
class ItaLoss:
    """Weights of the three terms, as in the ITA paper's code by default.

    text_weight: NLL of the text-only view; cross_weight: NLL of the cross-modal
    view; cva_weight: the Cross-View Alignment KL at `temperature`.
    """

    text_weight: float = 1.0
    cross_weight: float = 0.5
    cva_weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        for name in ("text_weight", "cross_weight", "cva_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"ItaLoss.{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"ItaLoss.temperature must be > 0, got {self.temperature}")

    @property
    def needs_text_view(self) -> bool:
        return self.text_weight > 0 or self.cva_weight > 0

    def __call__(
        self,
        crf: LinearChainCRF,
        mask: torch.Tensor,
        gold: torch.Tensor,
        text_emissions: Optional[torch.Tensor],
        cross_emissions: Optional[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Per-term losses summed over the batch rows.

        Rows are docs; `cross_emissions` holds the same docs in the cross-modal
        view (None when no doc of the batch has visual context).
        """
        terms = {}
        if text_emissions is not None and self.text_weight > 0:
            terms["text"] = self.text_weight * crf.nll(text_emissions, mask, gold).sum()
        if cross_emissions is not None:
            if self.cross_weight > 0:
                terms["cross"] = self.cross_weight * crf.nll(cross_emissions, mask, gold).sum()
            if text_emissions is not None and self.cva_weight > 0:
                with torch.no_grad():  # the teacher: no graph to build or backpropagate
                    cross_marginals = crf.log_marginals(cross_emissions, mask)
                cva = cva_divergence(
                    cross_marginals,
                    crf.log_marginals(text_emissions, mask),
                    mask,
                    self.temperature,
                )
                terms["cva"] = self.cva_weight * cva.sum()
        return terms


@dataclass(frozen=True)
class ViewScores:
    """Emission scores of one forward pass and which docs each row belongs to:
    the first len(text_rows) rows are text-only views, the rest cross-modal."""

    text_rows: List[int]
    cross_rows: List[int]
    scores: List[Floats2d]


def gold_tag_mask(gold: Sequence[Ints1d], n_tags: int, device: torch.device):
    """Boolean `(doc, token, tag)` masks of the gold tags from tag indices (-1:
    unknown, every tag allowed), and the `(doc, token)` mask of real tokens.
    Padding positions allow every tag, so they add nothing to the NLL."""
    masks = []
    for ids in gold:
        ids = torch.as_tensor(ids, dtype=torch.long)
        mask = torch.ones(len(ids), n_tags, dtype=torch.bool)
        known = ids >= 0
        mask[known] = torch.nn.functional.one_hot(ids[known], n_tags).bool()
        masks.append(mask)
    padded, lengths_mask = pad_sequences(masks)
    padded[~lengths_mask] = True
    return padded.to(device), lengths_mask.to(device)


def crf_loss_terms(
    crf: LinearChainCRF,
    loss: ItaLoss,
    use_context: bool,
    scores: ViewScores,
    rows: List[torch.Tensor],
    gold: Sequence[Ints1d],
) -> Dict[str, torch.Tensor]:
    """The loss terms of a batch, summed over docs, from the score rows as torch
    tensors (`rows`, in the order of `scores`). A doc without context has one
    row, its text-only view, which also stands in for its cross-modal view.
    Without context (`use_context` False) the loss is the text view's NLL."""
    n_docs = len(gold)
    n_text = len(scores.text_rows)
    text_by_doc = dict(zip(scores.text_rows, rows[:n_text]))
    cross_by_doc = dict(zip(scores.cross_rows, rows[n_text:]))
    gold_mask, mask = gold_tag_mask(gold, crf.n_tags, rows[0].device)
    text = None
    if loss.needs_text_view or not use_context:
        text, _ = pad_sequences([text_by_doc[i] for i in range(n_docs)])
    if not use_context:
        return {"text": crf.nll(text, mask, gold_mask).sum()}
    cross, _ = pad_sequences([cross_by_doc.get(i, text_by_doc.get(i)) for i in range(n_docs)])
    return loss(crf, mask, gold_mask, text, cross)


@registry.losses("spacy-ita.ita_loss.v1")
def configure_ita_loss(
    text_weight: float = 1.0,
    cross_weight: float = 0.5,
    cva_weight: float = 0.5,
    temperature: float = 4.0,
) -> ItaLoss:
    return ItaLoss(text_weight, cross_weight, cva_weight, temperature)
