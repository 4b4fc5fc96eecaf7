# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""`MambaZooCache`: the inference cache of every mamba-zoo model (conv + SSM states per layer and branch), a
transformers `Cache` of linear-attention layers, and the one rule for the cache argument's older names."""

from __future__ import annotations

import warnings
from typing import Sequence

import transformers
from packaging import version
from transformers.cache_utils import Cache, DummyLayer, LinearAttentionLayer

# transformers 5.24 renamed the cache argument to `cache` (its own generate() maps the old names to it at entry and
# passes `cache` to the model); before 5.24 the old names are the only ones and generate() passes them internally.
_CACHE_IS_THE_NAME = version.parse(transformers.__version__).release >= (5, 24)


def resolve_cache_kwarg(cache, kwargs: dict):
    """Accept transformers' older names for the cache argument (`cache_params`, `past_key_values`), popped from
    `kwargs`. With transformers >= 5.24 a non-None value under an old name gives a `FutureWarning` naming `cache`
    (Python's default filter shows it once per forward that receives it); older transformers use the old names themselves, so no
    warning there. `cache` wins when both are given."""
    for old_name in ("cache_params", "past_key_values"):
        value = kwargs.pop(old_name, None)
        if value is None:
            continue
        if _CACHE_IS_THE_NAME:
            warnings.warn(
                f"`{old_name}` is deprecated for mamba-zoo models (transformers >= 5.24 calls the cache argument "
                f"`cache`): pass `cache=` instead. The old name is still accepted.",
                FutureWarning,
                stacklevel=2,  # the model's forward: one warning per model class and name
            )
        if cache is None:
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
