# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Right-padding masks and per-sequence reversal, shared by the mixers, their CPU inference path and the models.

Bidirectional and reversed layers read each sequence backwards *within its own valid length*, never across padding:
`reversal_index` builds that permutation once, `reverse_within_lengths` applies it (or a plain flip).

The models' input contract lives here too, so that every family rejects the same bad inputs with the same words:
`check_attention_mask` (shape, 0/1 values, no empty row, right padding unless the model allows left padding),
`check_token_ids` (ids inside the embedding table), `check_labels` (targets inside the vocabulary or -100) and
`floating_input` (features cast to the model's dtype).
"""

from __future__ import annotations

from typing import Optional

import torch


def is_unpadded(attention_mask: Optional[torch.Tensor]) -> bool:
    """No mask, or one without padded steps (every entry 1)."""
    return attention_mask is None or bool(attention_mask.bool().all())


def mask_padding(hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor], time_dim: int = 1) -> torch.Tensor:
    """Zero the padded time steps of `hidden_states`.

    Args:
        hidden_states: `(batch, L, dim)` when `time_dim == 1`, `(batch, dim, L)` when `time_dim == 2`.
        attention_mask: `(batch, L)`, 1 for real tokens, 0 for padding; `None` leaves the input unchanged.
    """
    if attention_mask is None:
        return hidden_states
    if attention_mask.ndim != 2 or attention_mask.shape[1] != hidden_states.shape[time_dim]:
        raise ValueError(
            f"attention_mask must be (batch, L={hidden_states.shape[time_dim]}) for these hidden states, got shape "
            f"{tuple(attention_mask.shape)}."
        )
    mask = attention_mask.to(hidden_states.dtype)
    mask = mask[:, :, None] if time_dim == 1 else mask[:, None, :]
    return hidden_states * mask


def check_attention_mask(
    attention_mask: Optional[torch.Tensor],
    batch: int,
    length: int,
    allow_left_padding: bool = False,
    name: str = "attention_mask",
) -> Optional[torch.Tensor]:
    """The one check of a padding mask at a model's entry; returns the mask unchanged (or `None`).

    A valid mask is a `(batch, length)` tensor of 0/1 values (bool, integer or floating) where every row holds at
    least one 1 and its 1s are contiguous and start at position 0 (right padding), or, with `allow_left_padding`
    (causal decoders that generate from left-padded prompts), contiguous anywhere in the row. Raises a `TypeError`
    for a non-tensor and a `ValueError` naming the problem and the fix for anything else.
    """
    if attention_mask is None:
        return None
    if not torch.is_tensor(attention_mask):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, length), got {type(attention_mask).__name__}.")
    if tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"{name} must have shape (batch, length) = ({batch}, {length}) to match the input, got "
            f"{tuple(attention_mask.shape)}. Build the mask together with the padded input (the processor or "
            "feature extractor returns both)."
        )
    if attention_mask.is_complex():
        raise TypeError(f"{name} must hold 0/1 values (bool, integer or float), got dtype {attention_mask.dtype}.")
    if attention_mask.numel() == 0:
        return attention_mask
    if attention_mask.dtype != torch.bool:
        binary = (attention_mask == 0) | (attention_mask == 1)
        if not bool(binary.all()):
            bad = attention_mask[~binary].flatten()[:3].tolist()
            raise ValueError(
                f"{name} must be binary (1 = real token/frame, 0 = padding), got values such as {bad}. Soft or "
                "weighted masks are not supported: weight the loss instead."
            )
    mask = attention_mask.to(torch.long)
    empty = (mask.sum(-1) == 0).nonzero()[:, 0]
    if empty.numel() > 0:
        raise ValueError(
            f"{name} has all-zero rows {empty.tolist()} (empty samples with nothing to read). Remove empty samples "
            "from the batch."
        )
    # number of runs of 1s per row: 1 where the row is one contiguous block
    starts = mask[:, :1] + (mask[:, 1:] > mask[:, :-1]).long().sum(-1, keepdim=True)
    bad_rows = (starts[:, 0] != 1).nonzero()[:, 0]
    if bad_rows.numel() > 0:
        raise ValueError(
            f"{name} rows {bad_rows.tolist()} have padding between real positions (0s between 1s). Each row must be "
            "one block of 1s: pad on the right" + (" or on the left." if allow_left_padding else ".") + " (generate() "
            "builds such a mask itself when a prompt contains pad_token_id: then pass attention_mask explicitly.)"
        )
    if not allow_left_padding:
        left = (mask[:, 0] == 0).nonzero()[:, 0]
        if left.numel() > 0:
            raise ValueError(
                f"{name} rows {left.tolist()} are left-padded (start with 0s). This model needs a right-padded mask "
                "(1s followed by 0s): pad on the right (tokenizer/feature extractor `padding_side='right'`)."
            )
    return attention_mask


def _require_integer_ids(ids, name: str) -> None:
    """A `TypeError` unless `ids` is an integer tensor (token ids and labels alike)."""
    if not torch.is_tensor(ids) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        dtype = ids.dtype if torch.is_tensor(ids) else type(ids).__name__
        raise TypeError(f"{name} must be an integer tensor of token ids, got {dtype}.")


def check_token_ids(ids: Optional[torch.Tensor], vocab_size: int, name: str = "input_ids") -> Optional[torch.Tensor]:
    """A `ValueError` naming the vocabulary size and the offending id when an id falls outside `[0, vocab_size)`
    (instead of torch's "index out of range in self" from the embedding); returns `ids` unchanged."""
    if ids is None:
        return None
    _require_integer_ids(ids, name)
    if ids.numel() == 0:
        return ids
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name} holds id {bad}, outside the vocabulary [0, {vocab_size}) (vocab_size={vocab_size}). Pad with the "
            "tokenizer's pad_token_id (not -100, which is only for labels) and use the model's own tokenizer."
        )
    return ids


def check_labels(labels: Optional[torch.Tensor], vocab_size: int, name: str = "labels", ignore_index: int = -100,
                 pad_token_id: Optional[int] = None) -> Optional[torch.Tensor]:
    """Target ids: an integer tensor whose values are `ignore_index` (-100) or in `[0, vocab_size)`; otherwise a
    `TypeError`/`ValueError` naming the allowed values (instead of torch's "Target ... is out of bounds", or a
    negative id silently treated as padding). Returns `labels` unchanged."""
    if labels is None:
        return None
    _require_integer_ids(labels, name)
    bad = labels[((labels < 0) & (labels != ignore_index)) | (labels >= vocab_size)]
    if bad.numel() > 0:
        padding = f"{ignore_index}" + ("" if pad_token_id is None else f" or the pad_token_id ({pad_token_id})")
        raise ValueError(
            f"{name} hold {bad[0].item()}: ids must be in [0, vocab_size={vocab_size}), and padding must be {padding}."
        )
    return labels


def floating_input(features: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """The one dtype rule at a model's entry: floating features are cast to the model's parameter `dtype`
    (float64 / bfloat16 / float16 inputs on a float32 model and the other way round); anything else is a
    `TypeError`."""
    if not torch.is_tensor(features):
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(features).__name__}.")
    if not features.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor, got dtype {features.dtype}. Pass what the model's feature "
            "extractor returns, or convert with .float()."
        )
    return features.to(dtype)


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
