# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Mixture-of-experts MLPs: BlackMamba's top-1 `SwitchMoE` (router + experts), Sinkhorn balancing for training, and
the Switch-Transformer `load_balancing_loss`."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .cpu_decode import decode_linear


class MoEExpert(nn.Module):
    """One expert MLP (BlackMamba/Megatron layout): `linear_fc1` H -> 2F split `[gate | up]`, `act(gate) * up`,
    `linear_fc2` F -> H, no biases. With `gated=False`, `linear_fc1` is H -> F and the MLP is `fc2(act(fc1(x)))`."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, hidden_act: str = "gelu", gated: bool = True):
        super().__init__()
        self.gated = gated
        self.linear_fc1 = nn.Linear(hidden_size, (2 if gated else 1) * ffn_hidden_size, bias=False)
        self.linear_fc2 = nn.Linear(ffn_hidden_size, hidden_size, bias=False)
        self.act = ACT2FN[hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # decode_linear: the module's own call, or for a few no-grad rows the fused matrix-vector kernel
        hidden_states = decode_linear(self.linear_fc1, hidden_states)
        if self.gated:
            gate, up = hidden_states.chunk(2, dim=-1)
            return decode_linear(self.linear_fc2, self.act(gate) * up)
        return decode_linear(self.linear_fc2, self.act(hidden_states))


def sinkhorn(cost: torch.Tensor, tol: float = 1e-4, max_iters: int = 100) -> torch.Tensor:
    """Sinkhorn-Knopp balancing of `exp(cost)` `(tokens, experts)` towards uniform row and column sums."""
    cost = torch.exp(cost - cost.max())
    row_scale = torch.ones(cost.shape[0], device=cost.device, dtype=cost.dtype)
    col_scale = torch.ones(cost.shape[1], device=cost.device, dtype=cost.dtype)
    eps = 1e-8
    for _ in range(max_iters):
        row_scale = 1.0 / (cost.shape[0] * ((cost * col_scale).sum(1) + eps))
        new_col_scale = 1.0 / (cost.shape[1] * ((cost * row_scale[:, None]).sum(0) + eps))
        converged = torch.mean(torch.abs(new_col_scale - col_scale)) < tol
        col_scale = new_col_scale
        if converged:
            break
    return cost * col_scale * row_scale[:, None]


class SwitchMoE(nn.Module):
    """Top-1 mixture-of-experts MLP as released by BlackMamba (Zyphra 2024).

    The router `Linear(H, E, bias=True)` scores each token; `sigmoid` turns scores into probabilities; each token goes to
    its highest-probability expert and the expert output is scaled by that (raw, unnormalised) sigmoid probability.
    With `sinkhorn_in_training`, training assigns experts by Sinkhorn-balanced scores (as the released training code),
    while the scale stays the sigmoid probability of the assigned expert.

    Tokens are sorted by expert, so each expert runs once on a contiguous slice (no Python loop over tokens).
    Router and experts are plain `nn.Linear`s so LoRA can target them.

    forward: `(batch, L, H)` -> `((batch, L, H), router_logits (batch * L, E))`. `last_expert_counts` keeps the number
    of tokens per expert of the latest call (for load reports).
    """

    def __init__(
        self,
        hidden_size: int,
        ffn_hidden_size: int,
        num_experts: int,
        hidden_act: str = "gelu",
        gated: bool = True,
        router_bias: bool = True,
        sinkhorn_in_training: bool = False,
    ):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}.")
        self.num_experts = num_experts
        self.sinkhorn_in_training = sinkhorn_in_training
        self.router = nn.Linear(hidden_size, num_experts, bias=router_bias)
        self.local_experts = nn.ModuleList(
            [MoEExpert(hidden_size, ffn_hidden_size, hidden_act, gated) for _ in range(num_experts)]
        )
        self.last_expert_counts: Optional[torch.Tensor] = None

    def route(self, router_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """router_logits `(tokens, E)` -> (expert index `(tokens,)`, output scale `(tokens,)`)."""
        probs = torch.sigmoid(router_logits.float())
        if self.training and self.sinkhorn_in_training:
            with torch.no_grad():
                expert_index = sinkhorn(router_logits.detach().float()).argmax(dim=-1)
            scale = probs.gather(1, expert_index[:, None])[:, 0]
        else:
            scale, expert_index = probs.max(dim=-1)
        return expert_index, scale

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        shape = hidden_states.shape
        tokens = hidden_states.reshape(-1, shape[-1])
        router_logits = decode_linear(self.router, tokens)
        expert_index, scale = self.route(router_logits)
        if tokens.shape[0] == 1:  # a decoding step: one token, one expert, no sorting
            self.last_expert_counts = F.one_hot(expert_index, self.num_experts)[0]
            output = self.local_experts[int(expert_index)](tokens) * scale[:, None].to(tokens.dtype)
            return output.reshape(shape), router_logits

        order = torch.argsort(expert_index, stable=True)
        counts = torch.bincount(expert_index, minlength=self.num_experts)
        self.last_expert_counts = counts.detach()
        sorted_tokens = tokens[order]
        sorted_outputs = []
        start = 0
        for expert, count in zip(self.local_experts, counts.tolist()):
            if count > 0:
                sorted_outputs.append(expert(sorted_tokens[start:start + count]))
            start += count
        sorted_outputs = torch.cat(sorted_outputs, dim=0) if sorted_outputs else sorted_tokens
        output = torch.empty_like(sorted_outputs).index_copy(0, order, sorted_outputs)
        output = output * scale[:, None].to(output.dtype)
        return output.reshape(shape), router_logits


def load_balancing_loss(router_logits: Sequence[torch.Tensor] | torch.Tensor, num_experts: int,
                        attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Switch-Transformer load-balancing loss `E * sum_e f_e * P_e` over all MoE layers.

    `f_e` is the fraction of (unpadded) tokens whose top-1 expert is `e`, `P_e` the mean router probability of `e`
    (sigmoid scores normalised over experts). Equals 1 for perfectly balanced routing, up to `E` when collapsed.
    router_logits: one `(tokens, E)` tensor per MoE layer (or a concatenation); attention_mask: `(batch, L)` with
    `batch * L == tokens` per layer.
    """
    if isinstance(router_logits, (tuple, list)):
        if len(router_logits) == 0:
            raise ValueError("load_balancing_loss needs at least one router_logits tensor.")
        num_layers = len(router_logits)
        logits = torch.cat([r.float() for r in router_logits], dim=0)
    else:
        num_layers = 1
        logits = router_logits.float()
    probs = torch.sigmoid(logits)
    probs = probs / probs.sum(-1, keepdim=True)
    assignment = F.one_hot(probs.argmax(-1), num_experts).float()
    if attention_mask is not None:
        weights = attention_mask.reshape(-1).float().repeat(num_layers)[:, None]
    else:
        weights = torch.ones_like(probs[:, :1])
    total = weights.sum().clamp(min=1.0)
    tokens_per_expert = (assignment * weights).sum(0) / total
    prob_per_expert = (probs * weights).sum(0) / total
    return num_experts * torch.sum(tokens_per_expert * prob_per_expert)
