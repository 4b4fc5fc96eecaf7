# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""BlackMamba configuration (Zyphra 2024: Mamba blocks alternating with top-1 mixture-of-experts MLPs)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

from .configuration_mamba_common import MambaMixerConfigMixin


LAYER_TYPES = ("mamba", "moe", "mlp")

# The two released checkpoints (huggingface.co/Zyphra/BlackMamba-1.5B and -2.8B; named "active / total parameters":
# 340M/1.5B and 630M/2.8B). Both alternate mamba and 8-expert MoE layers, starting with mamba.
BLACKMAMBA_PRESETS: dict[str, dict] = {
    "blackmamba-1.5b": dict(hidden_size=1152, num_hidden_layers=30, ffn_hidden_size=3072, num_experts=8),
    "blackmamba-2.8b": dict(hidden_size=1472, num_hidden_layers=36, ffn_hidden_size=3872, num_experts=8),
}


def alternating_layer_types(num_hidden_layers: int) -> list[str]:
    """`["mamba", "moe", "mamba", "moe", ...]` of length `num_hidden_layers` (BlackMamba's layout)."""
    return ["mamba" if i % 2 == 0 else "moe" for i in range(num_hidden_layers)]


@strict
class BlackMambaConfig(MambaMixerConfigMixin, PreTrainedConfig):
    r"""Configuration of a [`BlackMambaForCausalLM`]. Defaults reproduce the released BlackMamba-2.8B (630M active).

    Layers (`layer_types`, one entry per residual block, each `Add -> RMSNorm -> mixer`):
    - `"mamba"`: a Mamba selective-SSM mixer (`state_size`, `conv_kernel`, `expand`, `time_step_rank`).
    - `"moe"`: a top-1 mixture of `num_experts` MLPs. The router `Linear(hidden, num_experts, bias=router_bias)` gives
      sigmoid probabilities; each token goes to its most probable expert, whose output is scaled by that raw sigmoid
      probability (as released). With `sinkhorn_in_training`, training assigns experts by Sinkhorn-balanced scores
      (BlackMamba's training recipe) instead of the arg-max.
    - `"mlp"`: one dense MLP of the same shape as an expert (the released code's `"1"` layers; also the dense control).

    Each MLP is `linear_fc2(act(gate) * up)` with `[gate | up] = linear_fc1(x)` when `gated_mlp` (the released code:
    `act` = exact GELU although the paper says SwiGLU; set `hidden_act="silu"` for SwiGLU), or `linear_fc2(act(fc1(x)))`.

    Args:
        vocab_size: 50304 (the GPT-NeoX-20B tokenizer, padded).
        hidden_size: model width H.
        num_hidden_layers: number of blocks; defaults to `len(layer_types)`, and `layer_types` defaults to alternating
            mamba/moe of this length.
        layer_types: list of `"mamba" | "moe" | "mlp"`.
        state_size, conv_kernel, expand, time_step_rank (`"auto"` = ceil(H / 16)), time_step_min/max/floor/scale,
            time_step_init_scheme (`"random"` | `"constant"`): Mamba mixer sizes and dt initialisation.
        use_bias: biases in the mixers' `in_proj` / `out_proj` (released: False); use_conv_bias: bias of the conv.
        ffn_hidden_size: F, the expert (and dense MLP) inner width.
        num_experts: experts per MoE layer; hidden_act: the MLP activation; gated_mlp: gated `[gate | up]` MLP.
        router_bias: bias in the router (released: True).
        sinkhorn_in_training: Sinkhorn-balanced expert assignment in training mode (released training recipe).
        output_router_logits: return every MoE layer's router logits and the load-balancing loss (`aux_loss`).
        router_aux_loss_coef: weight of the Switch/Mixtral load-balancing loss added to the LM loss when
            `output_router_logits` is on.
        layer_norm_eps: eps of the blocks' RMSNorms and of the final LayerNorm (which has a bias); also read as
            `layer_norm_epsilon` (the released code's name).
        residual_in_fp32: keep the residual stream in float32 (released: True).
        initializer_range: std of the normal init of embeddings and linear layers; rescale_prenorm_residual: divide the
            std of the residual-branch output projections (`out_proj`, `linear_fc2`) by sqrt(num_hidden_layers).
        kernel_backend: selective-scan backend, `"auto" | "cuda" | "cpu" | "reference"`.
    """

    model_type = "blackmamba"
    keys_to_ignore_at_inference = ["cache", "router_logits", "aux_loss"]
    attribute_map = {
        "intermediate_size": "ffn_hidden_size",
        "num_local_experts": "num_experts",
        "layer_norm_epsilon": "layer_norm_eps",  # the released code's name
    }

    # fields repeat across the configs on purpose: each @strict dataclass declares its own (shared logic: the mixin)

    vocab_size: int = 50304
    hidden_size: int = 1472
    num_hidden_layers: int | None = None
    layer_types: list[str] | None = None
    state_size: int = 16
    conv_kernel: int = 4
    expand: int = 2
    time_step_rank: int | str = "auto"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_scale: float = 1.0
    time_step_init_scheme: str = "random"
    use_bias: bool = False
    use_conv_bias: bool = True
    ffn_hidden_size: int = 3872
    num_experts: int = 8
    hidden_act: str = "gelu"
    gated_mlp: bool = True
    router_bias: bool = True
    sinkhorn_in_training: bool = True
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.01
    layer_norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    initializer_range: float = 0.02
    rescale_prenorm_residual: bool = True
    kernel_backend: str = "auto"
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0

    def __post_init__(self, **kwargs):
        if self.layer_types is None:
            self.layer_types = alternating_layer_types(36 if self.num_hidden_layers is None else self.num_hidden_layers)
        # transformers' legacy name of a "mamba" layer is "linear_attention" (its base class renames ours): keep ours
        layer_types = ["mamba" if t == "linear_attention" else t for t in self.layer_types]
        if self.num_hidden_layers is None:
            self.num_hidden_layers = len(layer_types)
        super().__post_init__(**kwargs)
        self.layer_types = layer_types
        self.resolve_and_validate()

    def validate_architecture(self):
        """Part of `@strict` validation: BlackMamba's own fields (`validate_mixer_fields` checks the mixer's)."""
        self._require_positive_ints(("vocab_size", "ffn_hidden_size", "num_experts"))
        unknown = sorted({t for t in self.layer_types if t not in LAYER_TYPES})
        if unknown:
            raise ValueError(f"Unknown layer type(s) {unknown} in layer_types; each entry must be one of {LAYER_TYPES}.")
        if self.num_hidden_layers != len(self.layer_types):
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is {self.num_hidden_layers}; "
                "give one layer type per layer (or leave num_hidden_layers unset)."
            )
        if "mamba" not in self.layer_types:
            raise ValueError("layer_types must contain at least one 'mamba' layer.")
        self._require_choice("time_step_init_scheme", ("random", "constant"))
        self._require(self.router_aux_loss_coef >= 0, "router_aux_loss_coef", "must be >= 0")
        from transformers.activations import ACT2FN

        self._require_choice("hidden_act", tuple(ACT2FN), "Use a name of transformers.activations.ACT2FN.")

    def validate_layer_type(self):
        """Our layer types are BlackMamba's (checked in `validate_architecture`), not transformers' attention ones."""

    @property
    def num_moe_layers(self) -> int:
        return sum(t == "moe" for t in self.layer_types)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "BlackMambaConfig":
        """A released architecture by name (`"blackmamba-1.5b"`, `"blackmamba-2.8b"`), with optional overrides."""
        if name not in BLACKMAMBA_PRESETS:
            raise ValueError(f"Unknown BlackMamba preset {name!r}; choose one of {sorted(BLACKMAMBA_PRESETS)}.")
        return cls(**{**BLACKMAMBA_PRESETS[name], **overrides})


__all__ = ["BLACKMAMBA_PRESETS", "BlackMambaConfig", "alternating_layer_types"]
