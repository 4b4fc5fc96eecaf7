# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""BlackMamba (Zyphra 2024) as a transformers model: Mamba blocks alternating with top-1 mixture-of-experts MLPs.

The stack is mamba-ssm's residual layout (`Add -> RMSNorm -> mixer` per block, a final LayerNorm with bias), where the
mixer is a Mamba selective-SSM layer, a `SwitchMoE` (router + experts) or a dense MLP. Parameter names match the
released checkpoints after the prefix rename done by `convert_blackmamba_original_to_hf.py`
(`embedding.word_embeddings` -> `backbone.embeddings`, `decoder.layers` -> `backbone.layers`,
`decoder.final_layernorm` -> `backbone.norm_f`).

Generation keeps one `MambaZooCache` (conv + SSM state per mamba layer, nothing for MLP layers), so each decoding step
costs the same whatever the context length.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_blackmamba import BlackMambaConfig
from .cpu_decode import add_rms_norm_decode, decode_linear
from .cpu_inference import inference_workspace
from .mamba_cache import MambaZooCache, resolve_cache_kwarg
from .mamba_layers import MambaBlock, MambaMixer, build_mixer
from .moe_layers import MoEExpert, SwitchMoE, load_balancing_loss
from .sequence_utils import check_attention_mask, check_labels, check_token_ids, floating_input


class BlackMambaPreTrainedModel(PreTrainedModel):
    config: BlackMambaConfig
    config_class = BlackMambaConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["MambaBlock"]
    supports_gradient_checkpointing = True
    _is_stateful = True
    # the loss may carry the router's load-balancing term: let Trainer average it over accumulation steps itself
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        """Normal(0, initializer_range) for embeddings and linears, mamba-ssm's SSM init (A_log, D, dt_proj) for the
        mixers, residual-branch output projections scaled by 1/sqrt(num_layers) (GPT-2 / mamba-ssm)."""
        super()._init_weights(module)
        std = self.config.initializer_range
        if self.config.rescale_prenorm_residual:
            residual_std = std / self.config.num_hidden_layers**0.5
        else:
            residual_std = std
        if isinstance(module, MambaMixer):
            module.init_ssm_parameters()
            init.kaiming_uniform_(module.conv1d.weight, a=5**0.5)
            if module.conv1d.bias is not None:
                init.zeros_(module.conv1d.bias)
            init.normal_(module.out_proj.weight, std=residual_std)
        elif isinstance(module, MoEExpert):
            init.normal_(module.linear_fc2.weight, std=residual_std)


def _build_layer(config: BlackMambaConfig, layer_idx: int) -> MambaBlock:
    layer_type = config.layer_types[layer_idx]
    if layer_type == "mamba":
        mixer = build_mixer(config, layer_idx)
    elif layer_type == "moe":
        mixer = SwitchMoE(
            config.hidden_size,
            config.ffn_hidden_size,
            config.num_experts,
            hidden_act=config.hidden_act,
            gated=config.gated_mlp,
            router_bias=config.router_bias,
            sinkhorn_in_training=config.sinkhorn_in_training,
        )
    else:  # "mlp", validated by the config
        mixer = MoEExpert(config.hidden_size, config.ffn_hidden_size, config.hidden_act, config.gated_mlp)
    return MambaBlock(
        config.hidden_size,
        mixer,
        norm_type="rmsnorm",
        norm_eps=config.layer_norm_eps,
        residual_in_fp32=config.residual_in_fp32,
    )


class BlackMambaModel(BlackMambaPreTrainedModel):
    """The BlackMamba stack without a head: token embeddings -> blocks -> final LayerNorm."""

    def __init__(self, config: BlackMambaConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([_build_layer(config, i) for i in range(config.num_hidden_layers)])
        # released checkpoints: LayerNorm with bias here, RMSNorm in the blocks
        self.norm_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, new_embeddings):
        self.embeddings = new_embeddings

    def make_cache(self) -> MambaZooCache:
        """An empty inference cache with one state slot per mamba layer."""
        return MambaZooCache([1 if t == "mamba" else 0 for t in self.config.layer_types])

    @staticmethod
    def _check_attention_mask(attention_mask, shape, cache) -> Optional[torch.Tensor]:
        """The shared mask check (left padding allowed: prompts are left-padded for generation). A cached step may
        get transformers' full-length `(batch, past + L)` mask: its last `L` columns are the new tokens'."""
        if attention_mask is None:
            return None
        batch, length = shape
        past = cache.get_seq_length() if cache is not None else 0
        if past > 0 and torch.is_tensor(attention_mask) and tuple(attention_mask.shape) == (batch, past + length):
            attention_mask = attention_mask[:, past:]
        elif past > 0 and torch.is_tensor(attention_mask) and tuple(attention_mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask must have shape (batch, length) = ({batch}, {length}) or, with a cache holding "
                f"{past} tokens, ({batch}, {past + length}); got {tuple(attention_mask.shape)}."
            )
        return check_attention_mask(attention_mask, batch, length, allow_left_padding=True)

    def expert_load(self) -> torch.Tensor:
        """Tokens routed to each expert by the latest forward: `(num_moe_layers, num_experts)` (padding included)."""
        counts = [
            layer.mixer.last_expert_counts
            for layer in self.layers
            if isinstance(layer.mixer, SwitchMoE) and layer.mixer.last_expert_counts is not None
        ]
        if not counts:
            return torch.zeros(0, self.config.num_experts, dtype=torch.long)
        return torch.stack(counts)

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        cache: Optional[MambaZooCache] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_router_logits: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        """
        Args:
            input_ids: `(batch, L)` token ids (or `inputs_embeds` `(batch, L, hidden_size)`).
            attention_mask: `(batch, L)`, 0/1, 1 = token, 0 = padding (left or right, one block of 1s per row);
                padded positions never reach the SSM states. Only needed in the prefill; a cached step also accepts
                transformers' full-length `(batch, past + L)` mask, of which the last `L` columns are read.
            cache: a `MambaZooCache` (also accepted as `cache_params` / `past_key_values`). Empty: the sequence is
                scanned and the states stored; filled: the tokens continue from the stored states.
            use_cache: build and return a cache when none is given (default: `config.use_cache`, off in training; on
                whenever a cache is passed).
            output_hidden_states: also return the residual stream before every block plus the final normed output
                (`num_hidden_layers + 1` tensors `(batch, L, hidden_size)`).
            output_router_logits: also return each MoE layer's router logits `(batch * L, num_experts)`.

        Returns:
            `MoeModelOutputWithPast(last_hidden_state (batch, L, hidden_size), cache, hidden_states, router_logits)`.
        """
        cache = resolve_cache_kwarg(cache, kwargs)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_router_logits = (
            output_router_logits if output_router_logits is not None else self.config.output_router_logits
        )
        if use_cache is None:  # a cache passed in is always used; otherwise the config decides (never in training)
            use_cache = cache is not None or (self.config.use_cache and not self.training)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            if input_ids.ndim != 2:
                raise ValueError(f"input_ids must be (batch, L), got shape {tuple(input_ids.shape)}.")
            inputs_embeds = self.embeddings(check_token_ids(input_ids, self.embeddings.num_embeddings))
        else:
            inputs_embeds = floating_input(inputs_embeds, self.embeddings.weight.dtype, "inputs_embeds")
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"inputs_embeds must be (batch, L, hidden_size={self.config.hidden_size}), got shape "
                    f"{tuple(inputs_embeds.shape)}."
                )
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = self.make_cache()
        if cache is not None and not isinstance(cache, MambaZooCache):
            raise TypeError(
                f"BlackMamba needs a MambaZooCache (model.backbone.make_cache()), got {type(cache).__name__}."
            )
        if not use_cache:
            cache = None
        attention_mask = self._check_attention_mask(attention_mask, inputs_embeds.shape[:2], cache)

        hidden_states, residual = inputs_embeds, None
        all_hidden_states = () if output_hidden_states else None
        all_router_logits = () if output_router_logits else None
        with inference_workspace():  # no-grad CPU mixers share their scratch buffers across layers
            for layer_type, block in zip(self.config.layer_types, self.layers):
                if output_hidden_states:
                    all_hidden_states += (hidden_states if residual is None else hidden_states + residual,)
                if layer_type == "mamba":
                    outputs = block(hidden_states, residual, attention_mask=attention_mask, cache=cache)
                else:
                    outputs = block(hidden_states, residual)
                hidden_states, residual = outputs[0], outputs[1]
                if layer_type == "moe" and output_router_logits:
                    all_router_logits += (outputs[2],)
        if cache is not None and self.config.layer_types[0] != "mamba":
            cache.advance(inputs_embeds.shape[1])  # the cache counts tokens in the mixer of layer 0

        fused = add_rms_norm_decode(self.norm_f, hidden_states, residual)  # a decoding step: one kernel
        if fused is not None:
            hidden_states, residual = fused
        else:
            residual = hidden_states + residual
            hidden_states = self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if not return_dict:
            return tuple(
                v for v in (hidden_states, cache, all_hidden_states, all_router_logits) if v is not None
            )
        return MoeModelOutputWithPast(
            last_hidden_state=hidden_states,
            cache=cache,
            hidden_states=all_hidden_states,
            router_logits=all_router_logits,
        )


class BlackMambaForCausalLM(BlackMambaPreTrainedModel, GenerationMixin):
    """BlackMamba with a language-modelling head tied to the input embeddings.

    The loss is next-token cross-entropy (labels are shifted inside, -100 ignored) plus, when router logits are output,
    `router_aux_loss_coef` times the Switch/Mixtral load-balancing loss (returned alone as `aux_loss`).
    """

    _tied_weights_keys = {"lm_head.weight": "backbone.embeddings.weight"}

    def __init__(self, config: BlackMambaConfig):
        super().__init__(config)
        self.backbone = BlackMambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, new_embeddings):
        self.backbone.set_input_embeddings(new_embeddings)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def expert_load(self) -> torch.Tensor:
        """Tokens per expert of the latest forward, `(num_moe_layers, num_experts)`."""
        return self.backbone.expert_load()

    # ------------------------------------------------------------------------------------------------- generation

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """generate() would build a transformers DynamicCache from the config; BlackMamba uses a MambaZooCache."""
        for old_name in ("cache_params", "past_key_values"):
            if model_kwargs.get(old_name) is not None and model_kwargs.get("cache") is None:
                model_kwargs["cache"] = model_kwargs.pop(old_name)
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = self.backbone.make_cache()
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, inputs_embeds=None,
                                      is_first_iteration=False, use_cache=None, **kwargs):
        """After the prefill only the newest token is fed (the states hold the rest), without an attention mask."""
        cache = resolve_cache_kwarg(cache, kwargs)
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, cache=cache, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration, use_cache=use_cache, **kwargs,
        )
        if use_cache and not is_first_iteration:
            model_inputs["attention_mask"] = None
        return model_inputs

    # ------------------------------------------------------------------------------------------------- forward

    # the head repeats its base model's arguments (transformers convention)
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        cache: Optional[MambaZooCache] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        output_router_logits: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """
        Args:
            input_ids: `(batch, L)`; attention_mask: `(batch, L)`; cache / use_cache / output_hidden_states /
                output_router_logits: as in [`BlackMambaModel.forward`].
            labels: `(batch, L)` targets for next-token prediction (shifted inside, -100 = ignored).
            shift_labels (keyword): `(batch, L)` targets already shifted (context-parallel training): position `t`
                predicts `shift_labels[:, t]`; used instead of shifting `labels`. Other loss keywords
                (`num_items_in_batch`, `ignore_index`) go to transformers' `ForCausalLMLoss` too.
            logits_to_keep: compute logits for the last `logits_to_keep` positions only (0 = all).

        Returns:
            `MoeCausalLMOutputWithPast(loss, aux_loss, logits (batch, L, vocab_size), cache, hidden_states,
            router_logits)`; `aux_loss` is the unweighted load-balancing loss (with `output_router_logits`).
        """
        cache = resolve_cache_kwarg(cache, kwargs)
        output_router_logits = (
            output_router_logits if output_router_logits is not None else self.config.output_router_logits
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.backbone(
            input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_router_logits=output_router_logits,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden_states = hidden_states[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden_states = hidden_states[:, logits_to_keep]
        logits = decode_linear(self.lm_head, hidden_states.to(self.lm_head.weight.dtype)).float()

        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            ignore_index = kwargs.get("ignore_index", -100)
            check_labels(labels, self.config.vocab_size, "labels", ignore_index)
            check_labels(kwargs.get("shift_labels"), self.config.vocab_size, "shift_labels", ignore_index)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        aux_loss = None
        if output_router_logits and outputs.router_logits:
            num_tokens = outputs.router_logits[0].shape[0]
            mask = attention_mask if attention_mask is not None and attention_mask.numel() == num_tokens else None
            aux_loss = load_balancing_loss(outputs.router_logits, self.config.num_experts, mask)
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)

        if not return_dict:
            output = (logits,) + tuple(
                v for v in (outputs.cache, outputs.hidden_states, outputs.router_logits) if v is not None
            )
            if aux_loss is not None:
                output = (aux_loss,) + output
            return ((loss,) + output) if loss is not None else output
        return MoeCausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            router_logits=outputs.router_logits,
        )


__all__ = ["BlackMambaForCausalLM", "BlackMambaModel", "BlackMambaPreTrainedModel"]
