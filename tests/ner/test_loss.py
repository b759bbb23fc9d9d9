"""Cross-View Alignment and the combined ITA loss."""
import pytest
import torch

from spacy_ita.ner.crf import LinearChainCRF
from spacy_ita.ner.loss import ItaLoss, cva_divergence


def log_marginals(shape, seed):
    torch.manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape), dim=-1)


def test_cva_is_zero_for_identical_views():
    m = log_marginals((2, 5, 7), 0)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert torch.allclose(cva_divergence(m, m.clone(), mask, 4.0), torch.zeros(2), atol=1e-6)


def test_cva_is_positive_for_different_views_and_ignores_padding():
    cross, text = log_marginals((2, 5, 7), 1), log_marginals((2, 5, 7), 2)
    mask = torch.ones(2, 5, dtype=torch.bool)
    full = cva_divergence(cross, text, mask, 4.0)
    assert (full > 0).all()
    mask[1, 3:] = False
    assert cva_divergence(cross, text, mask, 4.0)[1] < full[1]


def test_cva_gives_no_gradient_to_the_cross_modal_side():
    cross = log_marginals((1, 4, 5), 3).requires_grad_()
    text = log_marginals((1, 4, 5), 4).requires_grad_()
    cva_divergence(cross, text, torch.ones(1, 4, dtype=torch.bool), 4.0).sum().backward()
    assert cross.grad is None or torch.all(cross.grad == 0)
    assert text.grad is not None and text.grad.abs().sum() > 0


def test_ita_loss_terms_follow_the_weights():
    crf = LinearChainCRF(5)
    mask = torch.ones(2, 3, dtype=torch.bool)
    gold = torch.zeros(2, 3, 5, dtype=torch.bool)
    gold[..., 0] = True
    text, cross = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    terms = ItaLoss()(crf, mask, gold, text, cross)
    assert set(terms) == {"text", "cross", "cva"}
    no_cva = ItaLoss(text_weight=0.0, cross_weight=1.0, cva_weight=0.0)
    assert set(no_cva(crf, mask, gold, None, cross)) == {"cross"}
    assert not no_cva.needs_text_view
    doubled = ItaLoss(cva_weight=1.0)(crf, mask, gold, text, cross)
    assert doubled["cva"].item() == pytest.approx(2 * terms["cva"].item(), rel=1e-5)


def test_invalid_weights_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        ItaLoss(temperature=0)
    with pytest.raises(ValueError, match="cva_weight"):
        ItaLoss(cva_weight=-1)
