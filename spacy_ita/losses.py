"""ITA's training objective: CRF NLL on both views plus Cross-View Alignment."""
from dataclasses import dataclass
from typing import Dict, Optional

import torch
from spacy.util import registry

from .crf import LinearChainCRF


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


@registry.losses("spacy-ita.ita_loss.v1")
def configure_ita_loss(
    text_weight: float = 1.0,
    cross_weight: float = 0.5,
    cva_weight: float = 0.5,
    temperature: float = 4.0,
) -> ItaLoss:
    return ItaLoss(text_weight, cross_weight, cva_weight, temperature)
