# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Right-padding masks and per-sequence reversal, shared by the mixers, their CPU inference path and the models.

Bidirectional and reversed layers read each sequence backwards *within its own valid length*, never across padding:
`reversal_index` builds that permutation once, `reverse_within_lengths` applies it (or a plain flip).
"""

from __future__ import annotations

from typing import Optional

import torch


def mask_padding(hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor], time_dim: int = 1) -> torch.Tensor:
    """Zero the padded time steps of `hidden_states`.

    Args:
        hidden_states: `(batch, L, dim)` when `time_dim == 1`, `(batch, dim, L)` when `time_dim == 2`.
        attention_mask: `(batch, L)`, 1 for real tokens, 0 for padding; `None` leaves the input unchanged.
    """
    if attention_mask is None or attention_mask.shape[1] != hidden_states.shape[time_dim]:
        return hidden_states
    mask = attention_mask.to(hidden_states.dtype)
    mask = mask[:, :, None] if time_dim == 1 else mask[:, None, :]
    return hidden_states * mask


def lengths_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Valid lengths `(batch,)` of a right-padded `(batch, L)` attention mask; raises for any other padding."""
    attention_mask = attention_mask.to(torch.long)
    lengths = attention_mask.sum(-1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask, (positions[None, :] < lengths[:, None]).long()):
        raise ValueError(
            "Bidirectional Mamba layers need a right-padded attention_mask (ones followed by zeros in every row) "
            "so that each sequence is reversed within its own length. Pad on the right (tokenizer/feature extractor "
            "`padding_side='right'`)."
        )
    return lengths


def reversal_index(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Time indices `(batch, seq_len)` that reverse positions `[0, lengths[b])` of each row and keep the rest.

    The permutation is its own inverse, so the same index maps a reversed sequence back.
    """
    positions = torch.arange(seq_len, device=lengths.device)[None, :]
    lengths = lengths.to(positions.device)[:, None]
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def reverse_within_lengths(x: torch.Tensor, index: Optional[torch.Tensor], time_dim: int) -> torch.Tensor:
    """Apply a `reversal_index` (or a plain flip when `index is None`) along `time_dim` (1 or 2) of a 3-D tensor."""
    if index is None:
        return x.flip(time_dim)
    if time_dim == 1:
        return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))
    return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1))


def sequence_reversal_index(attention_mask: Optional[torch.Tensor], reverse_lengths: Optional[torch.Tensor],
                            seq_len: int) -> Optional[torch.Tensor]:
    """The one rule for what "read the sequence reversed" means: within `reverse_lengths` when given (MADEON's speech
    prefix), else within each sequence's valid length from `attention_mask`, else (`None`) a plain flip."""
    if reverse_lengths is not None:
        return reversal_index(reverse_lengths, seq_len)
    if attention_mask is not None:
        return reversal_index(lengths_from_attention_mask(attention_mask), seq_len)
    return None
