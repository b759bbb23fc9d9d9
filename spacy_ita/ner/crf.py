"""A batched linear-chain CRF in PyTorch with transition constraints.

It provides what ITA needs and pytorch-crf lacks: the log-partition (forward
algorithm in log space), per-token log-marginals (forward-backward, used by
Cross-View Alignment), the NLL of possibly partial gold tags, and Viterbi
decoding restricted to allowed tag sequences. All functions take padded
emissions `(batch, length, n_tags)` and a boolean `mask` `(batch, length)` that
is True on a prefix of each row (the real tokens).
"""
from typing import List, Optional, Sequence

import numpy
import torch
from torch import nn

# Forbidden moves get this score instead of -inf, so that logsumexp over a row
# with no allowed entry stays finite (and gradients stay NaN-free).
FORBIDDEN = -1.0e4


class LinearChainCRF(nn.Module):
    """Transition, start and end scores over `n_tags` tags, with hard constraints.

    allowed_transitions[i, j] says whether tag j may follow tag i;
    allowed_start / allowed_end whether a sequence may begin / end with a tag.
    Forbidden moves are excluded from the partition function, the marginals and
    decoding alike, so the model only ever represents valid tag sequences.
    """

    def __init__(
        self,
        n_tags: int,
        allowed_transitions: Optional[torch.Tensor] = None,
        allowed_start: Optional[torch.Tensor] = None,
        allowed_end: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        self.n_tags = n_tags
        self.transitions = nn.Parameter(torch.zeros(n_tags, n_tags))
        self.start = nn.Parameter(torch.zeros(n_tags))
        self.end = nn.Parameter(torch.zeros(n_tags))
        ones = torch.ones
        self.register_buffer(
            "allowed_transitions",
            _as_bool(allowed_transitions, ones(n_tags, n_tags)),
        )
        self.register_buffer("allowed_start", _as_bool(allowed_start, ones(n_tags)))
        self.register_buffer("allowed_end", _as_bool(allowed_end, ones(n_tags)))

    def _scores(self):
        transitions = self.transitions.masked_fill(~self.allowed_transitions, FORBIDDEN)
        start = self.start.masked_fill(~self.allowed_start, FORBIDDEN)
        end = self.end.masked_fill(~self.allowed_end, FORBIDDEN)
        return transitions, start, end

    def _forward_alphas(self, emissions: torch.Tensor, mask: torch.Tensor) -> List[torch.Tensor]:
        transitions, start, _ = self._scores()
        alpha = start + emissions[:, 0]
        alphas = [alpha]
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + emissions[:, t]
            alpha = torch.where(mask[:, t : t + 1], step, alpha)
            alphas.append(alpha)
        return alphas

    def log_partition(
        self,
        emissions: torch.Tensor,
        mask: torch.Tensor,
        tag_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """log Z per sequence, `(batch,)`; tag_mask `(batch, length, n_tags)`
        restricts each token to a set of tags (used for the gold score)."""
        if tag_mask is not None:
            emissions = emissions.masked_fill(~tag_mask, FORBIDDEN)
        _, _, end = self._scores()
        alpha = self._forward_alphas(emissions, mask)[-1]
        return torch.logsumexp(alpha + end, dim=1)

    def nll(
        self, emissions: torch.Tensor, mask: torch.Tensor, gold_tag_mask: torch.Tensor
    ) -> torch.Tensor:
        """Negative log-likelihood per sequence of the gold tags, `(batch,)`.

        gold_tag_mask marks the gold tag of each token; a token whose gold tag
        is unknown marks every tag, so partial annotation is marginalised over.
        """
        return self.log_partition(emissions, mask) - self.log_partition(
            emissions, mask, gold_tag_mask
        )

    def log_marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log P(tag_t = k | sentence) per token, `(batch, length, n_tags)`;
        rows of padding positions are undefined and should be masked out."""
        transitions, _, end = self._scores()
        alphas = self._forward_alphas(emissions, mask)
        length = emissions.shape[1]
        beta = end.expand_as(emissions[:, 0])
        betas = [beta]
        for t in range(length - 1, 0, -1):
            step = torch.logsumexp(
                transitions + (emissions[:, t] + beta).unsqueeze(1), dim=2
            )
            # Past a sequence's end, beta stays the end score.
            beta = torch.where(mask[:, t : t + 1], step, beta)
            betas.append(beta)
        betas.reverse()
        alpha = torch.stack(alphas, dim=1)
        beta = torch.stack(betas, dim=1)
        log_z = torch.logsumexp(alphas[-1] + end, dim=1)
        return alpha + beta - log_z[:, None, None]

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> List[List[int]]:
        """Constrained Viterbi: the best allowed tag sequence for each row."""
        transitions, start, end = self._scores()
        lengths = mask.sum(dim=1).tolist()
        score = start + emissions[:, 0]
        backpointers = []
        for t in range(1, emissions.shape[1]):
            candidates = score.unsqueeze(2) + transitions
            best, best_prev = candidates.max(dim=1)
            backpointers.append(best_prev)
            score = torch.where(mask[:, t : t + 1], best + emissions[:, t], score)
        score = score + end
        return _backtrack(backpointers, score.argmax(dim=1), lengths)


def _backtrack(backpointers: List[torch.Tensor], last_tags: torch.Tensor,
               lengths: List[int]) -> List[List[int]]:
    """Each row's path from its best last tag, following the backpointers
    (`backpointers[t][row, tag]`: the best tag at t given `tag` at t + 1), all
    rows at once per position: a Python loop over every token and row cost
    Viterbi as much as the CRF's forward pass."""
    n_rows, n_positions = len(lengths), len(backpointers) + 1
    ends = numpy.asarray(lengths, dtype=numpy.int64) - 1
    pointers = torch.stack(backpointers).cpu().numpy() if backpointers else None
    last = last_tags.cpu().numpy()
    rows = numpy.arange(n_rows)
    tags = numpy.zeros((n_rows, n_positions), dtype=numpy.int64)
    for t in range(n_positions - 1, -1, -1):
        tags[:, t] = last if t == n_positions - 1 else numpy.where(
            ends == t, last, pointers[t][rows, tags[:, t + 1]])
    return [tags[row, :length].tolist() for row, length in enumerate(lengths)]


def _as_bool(value: Optional[torch.Tensor], default: torch.Tensor) -> torch.Tensor:
    return (default if value is None else torch.as_tensor(value)).bool()


def pad_sequences(rows: Sequence[torch.Tensor]):
    """Stack `(length_i, n_tags)` tensors into `(batch, max_length, n_tags)` plus a mask."""
    lengths = torch.tensor([len(row) for row in rows])
    padded = nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
    mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    return padded, mask.to(padded.device)
