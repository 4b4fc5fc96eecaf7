# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""CTC prefix scoring for joint CTC/attention decoding (Watanabe et al. 2017, "Hybrid CTC/attention architecture for
end-to-end speech recognition"; the `ctc_weight` of ESPnet's beam search, where MADEON was built).

A decoder's hypothesis `g` (text tokens after `<generatetext>`) is scored during the search with

    score(g) = (1 - w) * log p_dec(g | x) + w * log p_ctc(g... | x)

where `p_ctc(g... | x)` is the CTC *prefix* probability: the total probability of all CTC alignments whose collapsed
label sequence starts with `g`. When `g` ends with `<eos>`, the CTC term is the probability of exactly `g`. The CTC
term is added one token at a time as `w * (log p_ctc(g + c...) - log p_ctc(g...))`, which a `LogitsProcessor` can do
inside transformers' greedy and beam search: summed over the steps it telescopes to `w * log p_ctc(g... | x)`.

The prefix probability is computed with the forward variables `r_t^n(g)` / `r_t^b(g)` (log-probability that the
first `t + 1` frames emit `g`, ending in a label / in a blank), extended for every candidate token `c` at once:

    phi_t      = r_t^b(g) (+) [c != last(g)] r_t^n(g)
    r_t^n(g+c) = (r_{t-1}^n(g+c) (+) phi_{t-1}) + x_t(c)
    r_t^b(g+c) = (r_{t-1}^b(g+c) (+) r_{t-1}^n(g+c)) + x_t(blank)
    psi(g+c)   = r_0^n(g+c) (+) sum_{t>=1} phi_{t-1} + x_t(c)        ((+): log-add)

so each decoding step costs one pass over the CTC frames, vectorised over hypotheses and the vocabulary. On CPU
with numba that pass is one kernel call (`_extend_kernel`, parallel over hypotheses); elsewhere it is a loop over
frames of batched torch ops. Both compute the same recursion (tests/test_ctc_prefix_scoring.py).
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch
from transformers import LogitsProcessor

try:
    import numba
    from numba import njit, prange

    from .cpu_scan_kernels import _expf, _log1p_unit, _restore_torch_threads, _set_threads
except ImportError:  # numba is optional: the torch loop runs instead
    numba = None

# log-probabilities below this stand for "impossible": finite, so differences of two of them never make NaN
IMPOSSIBLE = -1e10
# Whether CPU float32 scoring uses the numba kernel (False: the torch loop; for A/B comparisons and debugging).
CPU_KERNEL = True

if numba is not None:
    _IMPOSSIBLE32 = np.float32(IMPOSSIBLE)

    @njit(error_model="numpy")
    def _logaddexp(a, b):
        """log(exp(a) + exp(b)) in float32, without overflow."""
        return max(a, b) + _log1p_unit(_expf(-abs(a - b)))

    @njit(parallel=True, cache=True, fastmath={"contract"}, error_model="numpy")
    def _extend_kernel(x, lengths, r, last, blank_id, children, psi):
        """The recursion of `CTCPrefixScorer.extend` for every row (hypothesis) and token at once.

        x: (rows, T, V) CTC log-probabilities; lengths: (rows,) valid frames; r: (rows, T, 2) the hypotheses' forward
        variables (non-blank, blank); last: (rows,) each hypothesis' last token (-1: empty); children: (rows, T, 2, V)
        written with the children's forward variables; psi: (rows, V) written with the prefix scores (before the eos
        and excluded-token columns, which the caller sets).
        """
        rows, frames, vocab = x.shape
        for i in prange(rows):
            phi = np.empty(vocab, dtype=np.float32)
            valid = lengths[i]
            last_token = last[i]
            for c in range(vocab):
                first = x[i, 0, c] if last_token < 0 else _IMPOSSIBLE32
                children[i, 0, 0, c] = first
                children[i, 0, 1, c] = _IMPOSSIBLE32
                psi[i, c] = first
            for t in range(1, frames):
                r_n_g = r[i, t - 1, 0]
                r_b_g = r[i, t - 1, 1]
                both = _logaddexp(r_b_g, r_n_g)
                for c in range(vocab):
                    phi[c] = both
                if last_token >= 0:
                    phi[last_token] = r_b_g  # a repeated label needs a blank in between
                blank = x[i, t, blank_id]
                for c in range(vocab):
                    r_n_prev = children[i, t - 1, 0, c]
                    children[i, t, 0, c] = _logaddexp(r_n_prev, phi[c]) + x[i, t, c]
                    children[i, t, 1, c] = _logaddexp(children[i, t - 1, 1, c], r_n_prev) + blank
                if t < valid:
                    for c in range(vocab):
                        psi[i, c] = _logaddexp(psi[i, c], phi[c] + x[i, t, c])


class CTCPrefixScorer:
    """CTC prefix log-probabilities `log p_ctc(g + c... | x)` for every hypothesis `g` and candidate token `c`.

    Args:
        log_probs: `(batch, frames, vocab)` CTC log-probabilities (log-softmax over the vocabulary).
        lengths: `(batch,)` valid frames per utterance (frames beyond are never read).
        blank_id: the CTC blank token.
        eos_token_id: the end-of-sequence token: its score is the probability of exactly `g`.
        excluded_token_ids: tokens CTC never emits (besides the blank), scored as impossible.
    """

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, blank_id: int, eos_token_id: int,
                 excluded_token_ids: Iterable[int] = ()):
        if log_probs.ndim != 3:
            raise ValueError(f"log_probs must be (batch, frames, vocab), got shape {tuple(log_probs.shape)}.")
        lengths = torch.as_tensor(lengths, dtype=torch.long, device=log_probs.device)
        if lengths.shape != log_probs.shape[:1] or bool((lengths < 1).any()) or bool((lengths > log_probs.shape[1]).any()):
            raise ValueError(
                f"lengths must be (batch,) = ({log_probs.shape[0]},) with values in [1, {log_probs.shape[1]}], got "
                f"{lengths.tolist()}."
            )
        self.log_probs = log_probs.float().clamp(min=IMPOSSIBLE)
        self.lengths = lengths
        self.blank_id = int(blank_id)
        self.eos_token_id = int(eos_token_id)
        self.excluded = sorted({int(t) for t in excluded_token_ids} | {self.blank_id})
        if self.eos_token_id in self.excluded:
            raise ValueError("eos_token_id must differ from the blank and the excluded tokens.")

    @property
    def batch_size(self) -> int:
        return self.log_probs.shape[0]

    def empty_prefix(self, batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward variables `(rows, frames, 2)` (non-blank, blank) and prefix scores `(rows,)` of the empty prefix."""
        x = self.log_probs[batch_index]
        blank = x[:, :, self.blank_id].cumsum(1)
        r = torch.stack([torch.full_like(blank, IMPOSSIBLE), blank], dim=-1)
        return r, torch.zeros(len(batch_index), device=x.device)

    def extend(self, r: torch.Tensor, last: torch.Tensor, batch_index: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Extend every hypothesis by every token.

        Args:
            r: `(rows, frames, 2)` forward variables of the hypotheses `g` (`empty_prefix` or a column of a previous
                `extend`).
            last: `(rows,)` the last token of each `g`, -1 for the empty prefix.
            batch_index: `(rows,)` the utterance each hypothesis belongs to.
        Returns:
            `psi`: `(rows, vocab)` log `p_ctc(g + c... | x)` (for `c = eos`: log `p_ctc(g | x)`), and the children's
            forward variables `(rows, frames, 2, vocab)`.
        """
        x = self.log_probs[batch_index]  # (rows, T, V)
        lengths = self.lengths[batch_index]
        rows, frames, vocab = x.shape
        r_n_g, r_b_g = r[..., 0], r[..., 1]
        if numba is not None and CPU_KERNEL and x.device.type == "cpu" and r.dtype == torch.float32:
            children = np.empty((rows, frames, 2, vocab), dtype=np.float32)
            psi = np.empty((rows, vocab), dtype=np.float32)
            torch_threads = _set_threads()
            _extend_kernel(x.contiguous().numpy(), lengths.numpy(), r.detach().contiguous().numpy(),
                           last.to(torch.long).numpy(), self.blank_id, children, psi)
            _restore_torch_threads(torch_threads)
            return self._finish(torch.from_numpy(psi), r_n_g, r_b_g, lengths), torch.from_numpy(children)
        # phi_t(c) = r_t^b(g) (+) r_t^n(g), but without r^n when c repeats g's last label (that needs a blank between)
        phi = torch.logaddexp(r_b_g, r_n_g)[:, :, None].expand(rows, frames, vocab).clone()
        repeat = last >= 0
        if bool(repeat.any()):
            phi[repeat, :, last[repeat]] = r_b_g[repeat]
        r_n = torch.full((rows, frames, vocab), IMPOSSIBLE, device=x.device)
        r_b = torch.full((rows, frames, vocab), IMPOSSIBLE, device=x.device)
        r_n[:, 0] = torch.where((last < 0)[:, None], x[:, 0], torch.full_like(x[:, 0], IMPOSSIBLE))
        psi = r_n[:, 0].clone()
        blank = x[:, :, self.blank_id]
        for t in range(1, frames):
            r_n[:, t] = torch.logaddexp(r_n[:, t - 1], phi[:, t - 1]) + x[:, t]
            r_b[:, t] = torch.logaddexp(r_b[:, t - 1], r_n[:, t - 1]) + blank[:, t, None]
            inside = (t < lengths)[:, None]
            psi = torch.where(inside, torch.logaddexp(psi, phi[:, t - 1] + x[:, t]), psi)
        return self._finish(psi, r_n_g, r_b_g, lengths), torch.stack([r_n, r_b], dim=2)

    def _finish(self, psi: torch.Tensor, r_n_g: torch.Tensor, r_b_g: torch.Tensor, lengths: torch.Tensor):
        """The eos column (c = eos: the whole of g, over all valid frames), the excluded tokens, the floor."""
        final = (lengths - 1)[:, None]
        psi[:, self.eos_token_id] = torch.logaddexp(r_n_g.gather(1, final), r_b_g.gather(1, final))[:, 0]
        psi[:, self.excluded] = IMPOSSIBLE
        return psi.clamp(min=IMPOSSIBLE)


class CTCPrefixScoreLogitsProcessor(LogitsProcessor):
    """Joint CTC/attention decoding as a transformers `LogitsProcessor` (greedy, beam search or sampling).

    Each step turns the decoder's next-token scores `s` into `(1 - ctc_weight) * log_softmax(s) + ctc_weight *
    (log p_ctc(g + c...) - log p_ctc(g...))` for every candidate `c`, so beam scores accumulate the joint score of
    Watanabe et al. (2017). With `ctc_weight = 0` the scores are the decoder's log-probabilities, exactly.

    Hypotheses are recognised by their tokens (beam search may reorder and duplicate rows between steps): the forward
    variables of every child computed in one step are kept until the next.

    Args:
        scorer: a `CTCPrefixScorer` over the batch's CTC log-probabilities, or None to `attach` one before the first
            step (MADEON's `generate()` attaches the scores of its own prefill).
        ctc_weight: `w` in [0, 1].
        prompt_length: tokens at the start of every row that are not part of the hypothesis (`<generatetext>`: 1).
    """

    def __init__(self, scorer: Optional[CTCPrefixScorer], ctc_weight: float, prompt_length: int = 1):
        if not 0.0 <= float(ctc_weight) <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}.")
        self.scorer = scorer
        self.ctc_weight = float(ctc_weight)
        self.prompt_length = int(prompt_length)
        self._children: dict = {}  # (utterance, prefix tokens) -> (children's r (T, 2, V), children's psi (V,))

    def attach(self, scorer: CTCPrefixScorer) -> None:
        """Score with `scorer` from now on (a processor built without one)."""
        self.scorer = scorer
        self._children = {}

    def _lookup(self, keys: list, batch_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward variables `(rows, T, 2)` and prefix scores `(rows,)` of the rows' current hypotheses."""
        empty_rows = [i for i, (_, prefix) in enumerate(keys) if not prefix]
        r = torch.empty(len(keys), self.scorer.log_probs.shape[1], 2, device=self.scorer.log_probs.device)
        score = torch.empty(len(keys), device=r.device)
        if empty_rows:
            index = torch.tensor(empty_rows, device=r.device)
            r[index], score[index] = self.scorer.empty_prefix(batch_index[index])
        for i, (utterance, prefix) in enumerate(keys):
            if not prefix:
                continue
            parent = self._children.get((utterance, prefix[:-1]))
            if parent is None:
                raise RuntimeError(
                    "CTCPrefixScoreLogitsProcessor met a hypothesis it did not score the step before: use one "
                    "processor per generate() call."
                )
            r[i], score[i] = parent[0][:, :, prefix[-1]], parent[1][prefix[-1]]
        return r, score

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.scorer is None:
            raise RuntimeError(
                "CTCPrefixScoreLogitsProcessor has no CTC scores: build it with a CTCPrefixScorer or attach() one "
                "before decoding (MambaDecoderOnlyASR.generate attaches its prefill's; a cache passed in already "
                "filled has no prefill to read them from)."
            )
        rows = input_ids.shape[0]
        if rows % self.scorer.batch_size:
            raise ValueError(
                f"{rows} hypotheses do not divide into the {self.scorer.batch_size} utterances the CTC scores were "
                "computed for."
            )
        per_utterance = rows // self.scorer.batch_size
        batch_index = torch.arange(rows, device=input_ids.device) // per_utterance
        keys = [(int(b), tuple(int(t) for t in row[self.prompt_length:])) for b, row in zip(batch_index, input_ids)]
        # each distinct hypothesis is extended once (the beams of the first step all hold the empty prefix)
        unique = list(dict.fromkeys(keys))
        row_of = {key: i for i, key in enumerate(unique)}
        unique_index = torch.tensor([key[0] for key in unique], device=self.scorer.log_probs.device)
        r, prefix_score = self._lookup(unique, unique_index)
        last = torch.tensor([prefix[-1] if prefix else -1 for _, prefix in unique], device=r.device)
        psi, children = self.scorer.extend(r, last, unique_index.to(r.device))
        self._children = {key: (children[i], psi[i]) for i, key in enumerate(unique)}
        rows_to_unique = torch.tensor([row_of[key] for key in keys], device=psi.device)
        psi, prefix_score = psi[rows_to_unique], prefix_score[rows_to_unique]
        log_probs = torch.log_softmax(scores.float(), dim=-1)
        ctc_step = (psi - prefix_score[:, None]).to(log_probs.device)
        joint = (1.0 - self.ctc_weight) * log_probs + self.ctc_weight * ctc_step
        return joint.to(scores.dtype)


def ctc_prefix_processor(log_probs: torch.Tensor, lengths: torch.Tensor, ctc_weight: float, blank_id: int,
                         eos_token_id: int, excluded_token_ids: Optional[Iterable[int]] = (),
                         prompt_length: int = 1) -> CTCPrefixScoreLogitsProcessor:
    """A `CTCPrefixScoreLogitsProcessor` over `(batch, frames, vocab)` CTC log-probabilities."""
    scorer = CTCPrefixScorer(log_probs, lengths, blank_id, eos_token_id, excluded_token_ids or ())
    return CTCPrefixScoreLogitsProcessor(scorer, ctc_weight, prompt_length)


__all__ = ["CTCPrefixScorer", "CTCPrefixScoreLogitsProcessor", "ctc_prefix_processor"]
