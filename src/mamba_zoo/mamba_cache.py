# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""`MambaZooCache`: the inference cache of every mamba-zoo model (conv + SSM states per layer and branch), a
transformers `Cache` of linear-attention layers, and the one rule for the cache argument's older names."""

from __future__ import annotations

from typing import Sequence

from transformers.cache_utils import Cache, DummyLayer, LinearAttentionLayer


def resolve_cache_kwarg(cache, kwargs: dict):
    """Accept transformers' older names for the cache argument (`cache_params`, `past_key_values`)."""
    for old_name in ("cache_params", "past_key_values"):
        value = kwargs.pop(old_name, None)
        if cache is None and value is not None:
            cache = value
    return cache


class MambaZooCache(Cache):
    """Inference cache for mamba-zoo models, a transformers `Cache` of linear-attention layers.

    Layer `i` holds `states_per_layer[i]` (conv state, SSM state) pairs: 1 for a unidirectional mixer, 2 for a
    bidirectional one (state 0 = forward branch, state 1 = backward branch), 0 for a layer without recurrent state (an
    MoE/MLP layer, stored as a `DummyLayer`). Conv states are `(batch, conv_dim, d_conv)`; Mamba-1 SSM states are
    `(batch, d_inner, d_state)`, Mamba-2 ones `(batch, nheads, headdim, d_state)`, always float32.
    `reorder_cache(beam_idx)` (beam search) and `reset()` come from transformers' `Cache`.
    """

    def __init__(self, states_per_layer: Sequence[int]):
        states_per_layer = list(states_per_layer)
        if any(n < 0 for n in states_per_layer):
            raise ValueError(f"states_per_layer must be >= 0 everywhere, got {states_per_layer}.")
        layers = [LinearAttentionLayer(number_of_states=n) if n > 0 else DummyLayer() for n in states_per_layer]
        super().__init__(layers=layers)
        self.states_per_layer = states_per_layer

    def has_state(self, layer_idx: int, state_idx: int = 0) -> bool:
        layer = self.layers[layer_idx]
        return isinstance(layer, LinearAttentionLayer) and bool(layer.has_previous_state[state_idx])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return getattr(self, "_seen_tokens", 0)

    def advance(self, num_tokens: int) -> None:
        """Record that the model consumed `num_tokens` more positions (used for `get_seq_length`)."""
        self._seen_tokens = getattr(self, "_seen_tokens", 0) + num_tokens

    def reset(self) -> None:
        super().reset()
        self._seen_tokens = 0
