# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""SSAMBA: Self-Supervised Audio Mamba (Shams et al. 2024), as transformers models.

A log-mel spectrogram `(batch, time, mel)` is cut into 16x16 patches by a strided Conv2d (frequency-major token order),
a cls token is prepended at position 0, learned absolute position embeddings are added, and a stack of bidirectional
Mamba blocks (Vim "v2" mixers, optionally paired: layer 2i reads the sequence, layer 2i+1 its reversal) mixes the
tokens. Classification pools the non-cls tokens; pretraining follows SSAST (cluster-masked patches, InfoNCE + MSE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput, TokenClassifierOutput
from transformers.utils import ModelOutput

from .configuration_ssamba import SSAMBAConfig, patch_grid, patch_shape
from .cpu_inference import (
    blocks_time_chunked_applies,
    blocks_time_chunked_forward,
    has_hooks,
    inference_workspace,
    paired_blocks_cpu_applies,
    paired_blocks_cpu_forward,
    time_chunking,
)
from .mamba_layers import DropPath, MambaBlock, MambaMixer, build_mixer, build_norm
from .sequence_utils import check_attention_mask, floating_input, lengths_from_attention_mask


@dataclass
class SSAMBAForPreTrainingOutput(ModelOutput):
    """
    Args:
        loss: `discriminative_loss_weight * discriminative_loss + generative_loss_weight * generative_loss`.
        discriminative_loss: InfoNCE over the masked patches of each clip (masked patch classification).
        generative_loss: mean squared error of the reconstructed masked patches (masked patch reconstruction).
        discriminative_accuracy: fraction of masked patches whose prediction picks the right patch among the clip's
            masked patches, as SSAST/SSAMBA count it: each true patch's scores are normalised with a softmax over the
            predictions, and prediction j is right when true patch j has the highest probability in column j.
        hidden_states: per-step hidden states of the discriminative pass when `output_hidden_states=True`.
    """

    loss: Optional[torch.Tensor] = None
    discriminative_loss: Optional[torch.Tensor] = None
    generative_loss: Optional[torch.Tensor] = None
    discriminative_accuracy: Optional[torch.Tensor] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------------


def resize_grid_embeddings(
    embeddings: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], mode: str = "ssast"
) -> torch.Tensor:
    """Resize patch position embeddings `(1, F * T, D)` laid out on the `old_grid = (F, T)` grid to `new_grid`.

    `mode="ssast"` (SSAST/SSAMBA fine-tuning): along each axis, a smaller size takes the centre slice, a larger one is
    bilinearly interpolated. `mode="interpolate"`: bilinear along both axes.
    """
    dim = embeddings.shape[-1]
    old_f, old_t = old_grid
    grid = embeddings.reshape(1, old_f, old_t, dim).permute(0, 3, 1, 2)
    new_f, new_t = new_grid
    if mode == "interpolate":
        grid = F.interpolate(grid, size=(new_f, new_t), mode="bilinear", align_corners=False)
    else:
        if new_t < old_t:
            start = old_t // 2 - new_t // 2
            grid = grid[:, :, :, start:start + new_t]
        elif new_t > old_t:
            grid = F.interpolate(grid, size=(old_f, new_t), mode="bilinear", align_corners=False)
        if new_f < old_f:
            start = old_f // 2 - new_f // 2
            grid = grid[:, :, start:start + new_f, :]
        elif new_f > old_f:
            grid = F.interpolate(grid, size=(new_f, new_t), mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_f * new_t, dim)


# Without gradients, a spectrogram of more patch columns than twice this is embedded this many columns at a time.
PATCH_BLOCK_COLUMNS = 2048


class SSAMBAPatchEmbeddings(nn.Module):
    """Strided Conv2d over the `(mel, time)` spectrogram: `(batch, time, mel)` -> `(batch, F * T, D)`, frequency-major."""

    def __init__(self, config: SSAMBAConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            1, config.hidden_size, kernel_size=patch_shape(config.patch_size),
            stride=(config.frequency_stride, config.time_stride),
        )

    def forward(self, input_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        spectrogram = input_values.unsqueeze(1).transpose(2, 3)  # (batch, 1, mel, time)
        columns = (spectrogram.shape[3] - self.projection.kernel_size[1]) // self.projection.stride[1] + 1
        if torch.is_grad_enabled() or columns <= 2 * PATCH_BLOCK_COLUMNS or type(self.projection) is not nn.Conv2d:
            patches = self.projection(spectrogram)  # (batch, D, F, T)
        else:  # a long recording: a block of patch columns at a time (the convolution's unfolded input stays small)
            kernel, stride = self.projection.kernel_size[1], self.projection.stride[1]
            patches = None
            for start in range(0, columns, PATCH_BLOCK_COLUMNS):
                stop = min(start + PATCH_BLOCK_COLUMNS, columns)
                block = self.projection(spectrogram[..., start * stride:(stop - 1) * stride + kernel])
                if patches is None:
                    patches = block.new_empty(*block.shape[:3], columns)
                patches[..., start:stop] = block
        grid = (patches.shape[2], patches.shape[3])
        return patches.flatten(2).transpose(1, 2), grid


class SSAMBAEmbeddings(nn.Module):
    """Patch embeddings + cls token (position 0) + learned absolute position embeddings (+ a mask token for
    pretraining, SSAST's learnable `mask_embed`)."""

    def __init__(self, config: SSAMBAConfig, use_mask_token: bool = False):
        super().__init__()
        self.config = config
        self.patch_embeddings = SSAMBAPatchEmbeddings(config)
        self.num_prefix_tokens = 1 if config.use_cls_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.use_cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if use_mask_token else None
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, config.num_patches + self.num_prefix_tokens, config.hidden_size)
        ) if config.use_position_embeddings else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def position_embeddings_for(self, grid: tuple[int, int], interpolate_pos_encoding: bool,
                                with_prefix: bool = True) -> torch.Tensor:
        """Position embeddings `(1, prefix + F * T, D)` for an input whose patch grid is `grid = (F, T)`.

        The configured grid is used as is. Fewer time patches (a shorter input) take the first `T` columns, exactly the
        embeddings those patches get when the input is padded to `max_length`. Anything else needs
        `interpolate_pos_encoding=True` (bilinear interpolation of the grid).

        `with_prefix=False`: the patches' embeddings only, `(1, F * T, D)`, or, when interpolated, the interpolated
        grid `(1, D, F, T)` as `F.interpolate` returns it (no layout copy: the embeddings add it through a view).
        """
        config_grid = self.config.grid_size
        prefix = self.position_embeddings[:, :self.num_prefix_tokens]
        patches = self.position_embeddings[:, self.num_prefix_tokens:]
        dim = patches.shape[-1]
        if tuple(grid) == tuple(config_grid):
            return self.position_embeddings if with_prefix else patches
        if grid[0] == config_grid[0] and grid[1] < config_grid[1] and not interpolate_pos_encoding:
            patches = patches.reshape(1, config_grid[0], config_grid[1], dim)[:, :, :grid[1]].reshape(1, -1, dim)
        elif interpolate_pos_encoding:
            patches = patches.reshape(1, *config_grid, dim).permute(0, 3, 1, 2)
            patches = F.interpolate(patches, size=tuple(grid), mode="bilinear", align_corners=False)
            if not with_prefix:
                return patches
            patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim)
        else:
            raise ValueError(
                f"The input spectrogram gives a {grid[0]}x{grid[1]} (frequency x time) patch grid but the model's "
                f"position embeddings are laid out for {config_grid[0]}x{config_grid[1]} (num_mel_bins="
                f"{self.config.num_mel_bins}, max_length={self.config.max_length}). Pad/truncate the input to "
                f"max_length frames with {self.config.num_mel_bins} mel bins (the feature extractor does), pass "
                "interpolate_pos_encoding=True, or adapt the model once with model.resize_position_embeddings(...)."
            )
        return torch.cat([prefix, patches], dim=1) if with_prefix else patches

    def forward(
        self,
        input_values: torch.Tensor,
        bool_masked_pos: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: bool = False,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """input_values `(batch, time, mel)`; bool_masked_pos `(batch, F * T)` (True = replace by the mask token).
        Returns embeddings `(batch, prefix + F * T, D)` and the patch grid `(F, T)`."""
        patches, grid = self.patch_embeddings(input_values)
        batch, num_patches, dim = patches.shape
        if bool_masked_pos is not None:
            if self.mask_token is None:
                raise ValueError("bool_masked_pos needs a model built with a mask token (SSAMBAForPreTraining).")
            masked = bool_masked_pos.unsqueeze(-1).to(patches.dtype)
            patches = patches * (1.0 - masked) + self.mask_token.to(patches.dtype) * masked
        # one (batch, prefix + F * T, D) tensor, written in place: a long recording holds at most two of its size here
        prefix = self.num_prefix_tokens
        embeddings = patches.new_empty(batch, prefix + num_patches, dim)
        if self.cls_token is not None:
            embeddings[:, :prefix] = self.cls_token.to(patches.dtype)
        embeddings[:, prefix:] = patches
        del patches
        if self.position_embeddings is not None:
            positions = self.position_embeddings_for(grid, interpolate_pos_encoding, with_prefix=False)
            embeddings[:, :prefix] += self.position_embeddings[:, :prefix].to(embeddings.dtype)
            if positions.dim() == 4:  # (1, D, F, T) interpolated: added through a permuted view, not copied
                embeddings[:, prefix:].view(batch, *grid, dim).add_(positions.permute(0, 2, 3, 1).to(embeddings.dtype))
            else:
                embeddings[:, prefix:] += positions.to(embeddings.dtype)
        return self.dropout(embeddings), grid


# ----------------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------------


class SSAMBAPreTrainedModel(PreTrainedModel):
    config_class = SSAMBAConfig
    config: SSAMBAConfig
    base_model_prefix = "ssamba"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MambaBlock"]
    _supports_sdpa = False

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, MambaMixer):
            # mamba-ssm / Vim: PyTorch's default init for the projections and convs, out_proj scaled by 1/sqrt(depth)
            for name in ("in_proj", "x_proj", "out_proj", "conv1d", "conv1d_b", "x_proj_b"):
                layer = getattr(module, name, None)
                if layer is not None:
                    init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
                    if getattr(layer, "bias", None) is not None and name.startswith("conv1d"):
                        bound = 1.0 / math.sqrt(layer.weight[0].numel())
                        init.uniform_(layer.bias, -bound, bound)
                    elif getattr(layer, "bias", None) is not None:
                        init.zeros_(layer.bias)
            if not getattr(module.out_proj.weight, "_is_hf_initialized", False):
                module.out_proj.weight.div_(math.sqrt(self.config.num_hidden_layers))
            module.init_ssm_parameters()
        elif isinstance(module, nn.Conv2d):  # the patch projection (Vim: lecun normal)
            init.lecun_normal_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SSAMBAEmbeddings):
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, std=std)
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, std=std)
            if module.mask_token is not None:
                init.xavier_normal_(module.mask_token)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif "RMSNorm" in type(module).__name__:
            init.ones_(module.weight)

    def resize_position_embeddings(
        self,
        max_length: Optional[int] = None,
        frequency_stride: Optional[int] = None,
        time_stride: Optional[int] = None,
        num_mel_bins: Optional[int] = None,
        mode: str = "ssast",
    ) -> None:
        """Adapt a (pretrained) model to a new input length, patch stride or mel count, as SSAST/SSAMBA fine-tuning
        does: the patch Conv2d keeps its weights with the new strides; the patch position embeddings are cut (centre)
        or bilinearly interpolated along each axis to the new grid (`mode="ssast"`), or interpolated along both
        (`mode="interpolate"`). Updates `config` in place."""
        base = getattr(self, self.base_model_prefix, self)
        config = self.config
        new = dict(
            max_length=config.max_length if max_length is None else max_length,
            frequency_stride=config.frequency_stride if frequency_stride is None else frequency_stride,
            time_stride=config.time_stride if time_stride is None else time_stride,
            num_mel_bins=config.num_mel_bins if num_mel_bins is None else num_mel_bins,
        )
        SSAMBAConfig(**{**config.to_dict(), **new})  # validates the new geometry with clear errors
        old_grid = config.grid_size
        new_grid = patch_grid(new["num_mel_bins"], new["max_length"], config.patch_size,
                              new["frequency_stride"], new["time_stride"])
        embeddings = base.embeddings
        projection = embeddings.patch_embeddings.projection
        projection.stride = (new["frequency_stride"], new["time_stride"])
        with torch.no_grad():
            if embeddings.position_embeddings is None:  # nothing laid out on the grid: only the strides change
                for key, value in new.items():
                    setattr(config, key, value)
                return
            prefix = embeddings.position_embeddings[:, :embeddings.num_prefix_tokens]
            patches = embeddings.position_embeddings[:, embeddings.num_prefix_tokens:].detach()
            patches = resize_grid_embeddings(patches, old_grid, new_grid, mode=mode)
            embeddings.position_embeddings = nn.Parameter(torch.cat([prefix.detach(), patches], dim=1))
        for key, value in new.items():
            setattr(config, key, value)


def _scatter_tokens(hidden_states: torch.Tensor, order: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Undo the gather by `order` `(batch, L)`: tokens back at their grid positions, zeros where `token_mask` is 0."""
    restored = torch.zeros_like(hidden_states).scatter(1, order[:, :, None].expand_as(hidden_states), hidden_states)
    return restored * token_mask[:, :, None].to(hidden_states.dtype)


class SSAMBAModel(SSAMBAPreTrainedModel):
    """The bare SSAMBA encoder: spectrogram -> token representations and a pooled clip representation."""

    def __init__(self, config: SSAMBAConfig, use_mask_token: bool = False):
        super().__init__(config)
        self.embeddings = SSAMBAEmbeddings(config, use_mask_token=use_mask_token)
        # Vim's stochastic depth rule, [0] + linspace(0, rate, depth), in plain Python (works on the meta device)
        depth = config.num_hidden_layers
        rates = [0.0] + [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList(
            [
                MambaBlock(
                    config.hidden_size,
                    build_mixer(config, i, bidirectional=config.bidirectional_mixer),
                    norm_type=config.norm_type,
                    norm_eps=config.layer_norm_eps,
                    drop_path=rates[i],
                    residual_in_fp32=config.residual_in_fp32,
                )
                for i in range(config.num_hidden_layers)
            ]
        )
        self.drop_path = DropPath(config.drop_path_rate)
        self.norm_f = build_norm(config.norm_type, config.hidden_size, config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def token_mask(self, attention_mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Frame-level `attention_mask` `(batch, time)` (right-padded) -> token mask `(batch, prefix + F * T)`.

        A time column of patches is valid when its whole window lies in the valid frames (at least one column is)."""
        lengths = lengths_from_attention_mask(attention_mask)
        patch, stride = self.config.time_patch_size, self.config.time_stride
        valid_columns = ((lengths - patch).div(stride, rounding_mode="floor") + 1).clamp(min=1, max=grid[1])
        columns = torch.arange(grid[1], device=attention_mask.device)
        patch_mask = (columns[None, :] < valid_columns[:, None])[:, None, :].expand(-1, grid[0], -1).reshape(
            attention_mask.shape[0], -1
        )
        prefix = patch_mask.new_ones(attention_mask.shape[0], self.embeddings.num_prefix_tokens)
        return torch.cat([prefix, patch_mask], dim=1)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        bool_masked_pos: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        r"""
        Args:
            input_values: log-mel spectrogram `(batch, time, num_mel_bins)` (from `SSAMBAFeatureExtractor`); floating
                inputs of any precision are cast to the model's dtype.
            attention_mask: optional `(batch, time)` 0/1 frame mask, 1 = real frame, 0 = padding (right-padded, no
                empty rows). Patches reaching into padding are left out of the sequence (each clip is processed as if
                alone, at its own length) and out of the pooling. Without it every frame counts, as in SSAMBA's own
                training, where clips are zero-padded to `max_length`.
            bool_masked_pos: `(batch, F * T)`, pretraining only: patches replaced by the mask token.
            interpolate_pos_encoding: interpolate the position embeddings to an input grid other than the configured
                one (more frames than `max_length`, another mel count).

        Returns:
            `BaseModelOutputWithPooling`: `last_hidden_state` `(batch, prefix + F * T, hidden_size)` (zeros at padded
            patches), `pooler_output` `(batch, hidden_size)` (mean of the non-cls valid tokens, or the cls token with
            `pooling="cls"`), `hidden_states` (`num_hidden_layers + 1` entries): the embeddings, the residual stream after
            each layer but the last (with `bidirectional_layer_pairing`: after layer 2i the forward layer's stream,
            after layer 2i+1 the combined stream of the pair) and the final output.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        input_values = floating_input(input_values, self._input_dtype(), "input_values")
        self._check_input_values(input_values, interpolate_pos_encoding)
        hidden_states, grid = self.embeddings(input_values, bool_masked_pos, interpolate_pos_encoding)
        token_mask = self._token_mask(attention_mask, input_values, grid)
        order = None
        if token_mask is not None:
            # the embeddings as returned in hidden_states[0] (zeros at padded patches); the layers read them with each
            # clip's valid tokens gathered to the front (frequency-major order kept): a right-padded sequence
            hidden_states = embeddings = hidden_states * token_mask[:, :, None].to(hidden_states.dtype)
            order = torch.argsort((~token_mask).to(torch.int8), dim=1, stable=True)
            hidden_states = hidden_states.gather(1, order[:, :, None].expand_as(hidden_states))
        hidden_states, residual, all_hidden_states = self._run_layers(hidden_states, token_mask, output_hidden_states)
        hidden_states = self._final_norm(
            hidden_states, residual, in_place=not torch.is_grad_enabled() and not output_hidden_states
        )
        if order is not None:  # back to the grid order, zeros at the padded patches
            hidden_states = _scatter_tokens(hidden_states, order, token_mask)
            if output_hidden_states:
                all_hidden_states = (embeddings,) + tuple(_scatter_tokens(h, order, token_mask)
                                                          for h in all_hidden_states[1:])
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        pooled = self.pool(hidden_states, token_mask)
        if not return_dict:
            return tuple(v for v in (hidden_states, pooled, all_hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states, pooler_output=pooled, hidden_states=all_hidden_states
        )

    def _input_dtype(self) -> torch.dtype:
        """The dtype input spectrograms are cast to: that of the patch projection, which reads them."""
        return self.embeddings.patch_embeddings.projection.weight.dtype

    def _check_input_values(self, input_values: torch.Tensor, interpolate_pos_encoding: bool) -> None:
        """A clear error for a spectrogram of the wrong rank, mel count or length."""
        if input_values.ndim != 3:
            raise ValueError(
                f"input_values must be a (batch, time, num_mel_bins) spectrogram, got shape {tuple(input_values.shape)}. "
                "Use SSAMBAFeatureExtractor to turn waveforms into spectrograms."
            )
        if input_values.shape[-1] != self.config.num_mel_bins and not interpolate_pos_encoding:
            raise ValueError(
                f"input_values has {input_values.shape[-1]} mel bins but the model expects num_mel_bins="
                f"{self.config.num_mel_bins} (input shape (batch, time, mel) = {tuple(input_values.shape)})."
            )
        if input_values.shape[1] < self.config.time_patch_size:
            raise ValueError(
                f"input_values has {input_values.shape[1]} frames, fewer than the {self.config.time_patch_size} frames "
                f"of a patch (patch_size={self.config.patch_size}); "
                "pad the spectrogram (the feature extractor pads to max_length)."
            )

    def _token_mask(self, attention_mask, input_values, grid) -> Optional[torch.Tensor]:
        """The token-level mask `(batch, prefix + F * T)` of a frame-level `attention_mask`, or `None` when every token
        is valid."""
        if attention_mask is None:
            return None
        check_attention_mask(attention_mask, *input_values.shape[:2])
        token_mask = self.token_mask(attention_mask, grid)
        return None if bool(token_mask.all()) else token_mask

    def _run_layers(self, hidden_states, token_mask, output_hidden_states):
        """The blocks over a right-padded token sequence `(batch, L, D)` -> (last block output, residual stream, hidden
        states so far). With `bidirectional_layer_pairing`, layer 2i reads the sequence and layer 2i+1 reads it
        reversed within each clip's length; the pair's outputs and residual streams are summed."""
        sequence_mask = None
        if token_mask is not None:
            lengths = token_mask.sum(1)
            sequence_mask = (torch.arange(hidden_states.shape[1], device=lengths.device)[None, :] < lengths[:, None]).long()
        mixer_kwargs = {"attention_mask": sequence_mask} if sequence_mask is not None else {}
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        residual = None
        with inference_workspace():  # no-grad CPU mixers share their scratch buffers across layers
            if (sequence_mask is None and not output_hidden_states
                    and blocks_time_chunked_applies(self.layers, hidden_states)):
                # a long recording: each layer (or pair) in time chunks, in place in two sequence-sized buffers
                group = 2 if self.config.bidirectional_layer_pairing else 1
                reverses = (False, True)[:group]
                stream = None
                for i in range(0, len(self.layers), group):
                    hidden_states, stream = blocks_time_chunked_forward(
                        self.layers[i:i + group], reverses, hidden_states, stream, float(group)
                    )
                return hidden_states, (stream.mul_(group) if group > 1 else stream), None
            if (self.config.bidirectional_layer_pairing and not output_hidden_states
                    and paired_blocks_cpu_applies(self.layers, hidden_states)):
                # the fused CPU path computes each pair at once; both layers' residual streams are the same `stream`
                stream = None
                for i in range(len(self.layers) // 2):
                    hidden_states, stream = paired_blocks_cpu_forward(
                        self.layers[2 * i:2 * i + 2], (False, True), hidden_states, stream, 2.0, sequence_mask
                    )
                return hidden_states, stream.mul_(2), None  # the last pair's residuals, summed
            if self.config.bidirectional_layer_pairing:
                num_pairs = len(self.layers) // 2
                for i in range(num_pairs):
                    forward_out, forward_residual = self.layers[2 * i](hidden_states, residual, **mixer_kwargs)
                    if output_hidden_states:  # layer 2i: the forward layer's residual stream
                        all_hidden_states += (forward_residual + forward_out,)
                    backward_out, backward_residual = self.layers[2 * i + 1](
                        hidden_states, residual, reverse=True, **mixer_kwargs
                    )
                    if torch.is_grad_enabled() or output_hidden_states:
                        hidden_states = forward_out + backward_out
                        residual = forward_residual + backward_residual
                    else:  # inference: sum into the forward layer's outputs (two sequence-length tensors fewer)
                        hidden_states = forward_out.add_(backward_out)
                        residual = forward_residual.add_(backward_residual)
                        del backward_out, backward_residual
                    if output_hidden_states and i < num_pairs - 1:  # layer 2i+1: the combined stream
                        all_hidden_states += (residual + hidden_states,)
            else:
                for i, layer in enumerate(self.layers):
                    hidden_states, residual = layer(hidden_states, residual, **mixer_kwargs)
                    if output_hidden_states and i < len(self.layers) - 1:
                        all_hidden_states += (residual + hidden_states,)
        return hidden_states, residual, all_hidden_states

    def _final_norm(self, hidden_states, residual, in_place: bool = False) -> torch.Tensor:
        """The last residual add and `norm_f` (applied twice with `double_final_norm`, as the released checkpoints).
        `in_place` (inference, `residual` not needed afterwards): the add and the norms are written into `residual`,
        `cpu_inference.TIME_CHUNK_TOKENS` tokens at a time (all at once when `norm_f` has hooks, which expect one
        call), so a long input needs no further sequence-sized tensors."""
        if in_place and residual is not None and residual.dtype == self.norm_f.weight.dtype:
            residual = residual.add_(self.drop_path(hidden_states))
            step = residual.shape[1] if has_hooks(self.norm_f) else max(1, time_chunking()[1] // max(residual.shape[0], 1))
            for start in range(0, residual.shape[1], step):
                part = residual[:, start:start + step]
                normed = self.norm_f(part)
                part.copy_(self.norm_f(normed) if self.config.double_final_norm else normed)
            return residual
        residual = hidden_states if residual is None else residual + self.drop_path(hidden_states)
        hidden_states = self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))
        if self.config.double_final_norm:
            hidden_states = self.norm_f(hidden_states)
        return hidden_states

    def pool(self, hidden_states: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """`(batch, prefix + N, D)` -> `(batch, D)`: mean of the valid non-cls tokens, or the cls token."""
        prefix = self.embeddings.num_prefix_tokens
        if self.config.pooling == "cls":
            return hidden_states[:, 0]
        tokens = hidden_states[:, prefix:]
        if token_mask is None:
            return tokens.mean(dim=1)
        weights = token_mask[:, prefix:, None].to(tokens.dtype)
        return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------------


class SSAMBAClassificationHead(nn.Module):
    """`LayerNorm(D) -> Linear(D, num_labels)` (SSAST/SSAMBA's `mlp_head`)."""

    def __init__(self, config: SSAMBAConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.classifier_layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.dense(self.layernorm(pooled))


class SSAMBAForAudioClassification(SSAMBAPreTrainedModel):
    """SSAMBA with a clip-level classification/regression head on the pooled representation.

    The loss follows transformers' conventions from `config.problem_type`: cross-entropy for single-label
    classification (integer labels `(batch,)`), BCE-with-logits for multi-label (float labels `(batch, num_labels)`),
    MSE for regression (`num_labels == 1`).
    """

    accepts_loss_kwargs = False

    def __init__(self, config: SSAMBAConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ssamba = SSAMBAModel(config)
        self.classifier = SSAMBAClassificationHead(config)
        self.post_init()

    # the heads repeat their base model's arguments (transformers convention)
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        r"""
        Args:
            input_values: `(batch, time, num_mel_bins)` spectrogram. attention_mask: optional `(batch, time)`.
            labels: `(batch,)` class indices (single-label), `(batch, num_labels)` floats (multi-label) or `(batch,)`
                floats (regression).

        Returns:
            `SequenceClassifierOutput` with `logits` `(batch, num_labels)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ssamba(
            input_values, attention_mask=attention_mask, interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class SSAMBAForAudioFrameClassification(SSAMBAPreTrainedModel):
    """SSAMBA with a per-time-step head (in the style of `Wav2Vec2ForAudioFrameClassification`): one prediction per
    column of the patch grid, i.e. every `time_stride` spectrogram frames (`time_stride * 10` ms with the 10 ms hop of
    `SSAMBAFeatureExtractor`), for keyword search and event detection in long recordings.

    The last hidden states of a column's frequency patches are averaged, then `LayerNorm -> Linear(num_labels)`
    (the clip head's layout, so a clip classifier's head loads into it). The cls token is not used.

    Loss: integer labels `(batch, T)` (class per column, -100 = ignore) -> cross-entropy; float labels
    `(batch, T, num_labels)` -> BCE-with-logits (multi-label: overlapping events). Padded columns (from
    `attention_mask`) are left out of the loss whatever their labels say.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: SSAMBAConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ssamba = SSAMBAModel(config)
        self.classifier = SSAMBAClassificationHead(config)
        self.post_init()

    def column_times(self, num_columns: int, hop_seconds: float = 0.01) -> torch.Tensor:
        """`(num_columns, 2)` start and end in seconds of the frames each output column reads (a patch's frames),
        for a feature hop of `hop_seconds`."""
        starts = torch.arange(num_columns, dtype=torch.float64) * self.config.time_stride
        return torch.stack([starts, starts + self.config.time_patch_size], dim=1) * hop_seconds

    # the heads repeat their base model's arguments (transformers convention)
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        r"""
        Args:
            input_values: `(batch, time, num_mel_bins)` spectrogram. attention_mask: optional `(batch, time)`.
                A recording longer than `config.max_length` frames needs `interpolate_pos_encoding=True` (or a model
                resized once with `resize_position_embeddings`), unless the model has no position embeddings
                (`use_position_embeddings=False`).
            labels: `(batch, T)` class indices per output column (-100: ignored), or `(batch, T, num_labels)` floats
                (multi-label), with `T` the number of patch columns (`logits.shape[1]`).

        Returns:
            `TokenClassifierOutput` with `logits` `(batch, T, num_labels)` (zeros at padded columns).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ssamba(
            input_values, attention_mask=attention_mask, interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states, return_dict=True,
        )
        prefix = self.ssamba.embeddings.num_prefix_tokens
        tokens = outputs.last_hidden_state[:, prefix:]
        config = self.config
        grid = patch_grid(input_values.shape[-1], input_values.shape[1], config.patch_size, config.frequency_stride,
                          config.time_stride)
        columns = tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1]).mean(dim=1)  # (batch, T, D)
        logits = self.classifier(columns)
        column_mask = None
        if attention_mask is not None:
            column_mask = self.ssamba.token_mask(attention_mask, grid)[:, prefix:].reshape(-1, *grid)[:, 0]
            logits = logits * column_mask[:, :, None].to(logits.dtype)
        loss = None
        if labels is not None:
            loss = self._frame_loss(logits, labels, column_mask)
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

    def _frame_loss(self, logits: torch.Tensor, labels: torch.Tensor, column_mask: Optional[torch.Tensor]):
        batch, columns, num_labels = logits.shape
        labels = labels.to(logits.device)
        if labels.shape[:2] != (batch, columns):
            raise ValueError(
                f"labels must give one label per output column: (batch, T) = {(batch, columns)} or (batch, T, "
                f"num_labels) = {(batch, columns, num_labels)}, got {tuple(labels.shape)} (T = (frames - "
                f"{self.config.time_patch_size}) // {self.config.time_stride} + 1)."
            )
        keep = torch.ones(batch, columns, dtype=torch.bool, device=logits.device) if column_mask is None \
            else column_mask.bool()
        if labels.is_floating_point():
            if labels.shape != logits.shape:
                raise ValueError(f"multi-label frame labels must be (batch, T, num_labels) = {tuple(logits.shape)}, "
                                 f"got {tuple(labels.shape)}.")
            return F.binary_cross_entropy_with_logits(logits.float()[keep], labels.float()[keep])
        if labels.ndim != 2:
            raise ValueError(f"class-index frame labels must be (batch, T) = {(batch, columns)}, got "
                             f"{tuple(labels.shape)}.")
        labels = labels.masked_fill(~keep, -100)
        valid = labels[labels != -100]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_labels):
            raise ValueError(f"frame labels must be class indices in [0, {num_labels}) or -100, got values in "
                             f"[{int(valid.min())}, {int(valid.max())}].")
        return F.cross_entropy(logits.float().reshape(-1, num_labels), labels.reshape(-1), ignore_index=-100)


def discriminative_accuracy(scores: torch.Tensor) -> torch.Tensor:
    """SSAST/SSAMBA's masked-patch classification accuracy of `scores` `(batch, M, M)`, where `scores[b, i, j]` =
    <true patch i, predicted patch j> (their `total`): each row is normalised with a softmax over the predictions,
    then prediction j is right when true patch j has the highest probability in column j. Original:
    `torch.argmax(self.softmax(total), dim=0) == torch.arange(mask_patch)` with `self.softmax = nn.Softmax(dim=-1)`
    (SSAST `src/models/ast_models.py` `mpc`, SSAMBA `src/models/both_models.py` `mpc`). Returns a scalar in [0, 1]."""
    diagonal = torch.arange(scores.shape[-1], device=scores.device)
    return (F.softmax(scores.float(), dim=-1).argmax(dim=1) == diagonal[None, :]).float().mean()


def cluster_mask_indices(
    grid: tuple[int, int], mask_count: int, cluster_factor: int = 3, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """SSAST's masking: indices `(mask_count,)` of patches to mask in a frequency-major `(F, T)` grid.

    With `cluster_factor > 0`, squares of side `3 + randint(cluster_factor)` patches (one side per clip) are masked
    around random start patches (`start + T * i + j`, as in SSAST) until more than `mask_count` distinct patches are
    covered; a random `mask_count` of them are kept. With `cluster_factor == 0`, patches are drawn uniformly.
    """
    num_patches = grid[0] * grid[1]
    if not 0 < mask_count < num_patches:
        raise ValueError(
            f"mask_patch_count ({mask_count}) must be between 1 and the number of patches - 1 ({num_patches - 1}); "
            "lower config.mask_patch_count."
        )
    if cluster_factor == 0:
        return torch.randperm(num_patches, generator=generator)[:mask_count]
    side = 3 + int(torch.randint(cluster_factor, (1,), generator=generator))
    offsets = (torch.arange(side)[:, None] * grid[1] + torch.arange(side)[None, :]).reshape(-1)
    covered = torch.zeros(num_patches, dtype=torch.bool)
    while int(covered.sum()) <= mask_count:
        start = int(torch.randint(num_patches, (1,), generator=generator))
        candidates = start + offsets
        covered[candidates[(candidates > 0) & (candidates < num_patches)]] = True
    chosen = covered.nonzero()[:, 0]
    return chosen[torch.randperm(chosen.numel(), generator=generator)[:mask_count]]


class SSAMBAForPreTraining(SSAMBAPreTrainedModel):
    """SSAMBA with SSAST's self-supervised objectives (joint discriminative + generative masked patch modelling).

    Two forward passes with independent cluster masks (or one shared mask with
    `share_mask_between_objectives=True`): the discriminative head (`Linear(D, D) - ReLU - Linear(D, P)`, P = patch
    pixels) predicts each masked patch and is scored by InfoNCE against the other masked patches of the same clip;
    the generative head (same shape) regresses the masked patch values (MSE). Loss = `w_d * nce + w_g * mse`.
    Patches must not overlap during pretraining (strides equal to the patch size along both axes).
    """

    accepts_loss_kwargs = False

    def __init__(self, config: SSAMBAConfig):
        super().__init__(config)
        if (config.frequency_stride, config.time_stride) != patch_shape(config.patch_size):
            raise ValueError(
                f"Pretraining needs non-overlapping patches ((frequency_stride, time_stride) == patch size "
                f"{patch_shape(config.patch_size)}), got strides ({config.frequency_stride}, {config.time_stride}): the masked "
                "patches would otherwise leak into their neighbours. Fine-tune with smaller strides later "
                "(resize_position_embeddings)."
            )
        if config.mask_patch_count >= config.num_patches:
            raise ValueError(
                f"mask_patch_count ({config.mask_patch_count}) must be smaller than the number of patches "
                f"({config.num_patches} for num_mel_bins={config.num_mel_bins}, max_length={config.max_length})."
            )
        self.share_mask_between_objectives = False
        self.ssamba = SSAMBAModel(config, use_mask_token=True)
        patch_pixels = config.frequency_patch_size * config.time_patch_size
        self.discriminative_head = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(), nn.Linear(config.hidden_size, patch_pixels)
        )
        self.generative_head = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(), nn.Linear(config.hidden_size, patch_pixels)
        )
        self.post_init()

    def sample_masks(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Masked patch indices `(batch, mask_patch_count)` for a batch (one independent cluster mask per clip)."""
        return torch.stack([
            cluster_mask_indices(self.config.grid_size, self.config.mask_patch_count, self.config.mask_cluster_factor,
                                 generator)
            for _ in range(batch)
        ])

    def _encode_masked(self, input_values, mask_index, output_hidden_states):
        batch = input_values.shape[0]
        bool_masked_pos = torch.zeros(batch, self.config.num_patches, dtype=torch.bool, device=input_values.device)
        bool_masked_pos.scatter_(1, mask_index, True)
        outputs = self.ssamba(input_values, bool_masked_pos=bool_masked_pos, output_hidden_states=output_hidden_states,
                              return_dict=True)
        prefix = self.ssamba.embeddings.num_prefix_tokens
        index = (mask_index + prefix)[:, :, None].expand(-1, -1, outputs.last_hidden_state.shape[-1])
        return outputs.last_hidden_state.gather(1, index), outputs.hidden_states

    def forward(
        self,
        input_values: torch.Tensor,
        mask_index: Optional[torch.Tensor] = None,
        generative_mask_index: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        r"""
        Args:
            input_values: `(batch, max_length, num_mel_bins)` spectrogram.
            mask_index: optional `(batch, mask_patch_count)` masked patch indices for the discriminative pass (sampled
                with `sample_masks` when omitted). generative_mask_index: the same for the generative pass (a fresh
                sample, or `mask_index` with `share_mask_between_objectives`).

        Returns:
            `SSAMBAForPreTrainingOutput`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        input_values = floating_input(input_values, self.ssamba._input_dtype(), "input_values")
        batch = input_values.shape[0]
        expected = (self.config.max_length, self.config.num_mel_bins)
        if input_values.ndim != 3 or tuple(input_values.shape[1:]) != expected:
            raise ValueError(
                f"Pretraining input_values must be (batch, {expected[0]}, {expected[1]}), got "
                f"{tuple(input_values.shape)}."
            )
        device = input_values.device
        if mask_index is None:
            mask_index = self.sample_masks(batch).to(device)
        if generative_mask_index is None:
            generative_mask_index = mask_index if self.share_mask_between_objectives else self.sample_masks(batch).to(device)

        spectrogram = input_values.unsqueeze(1).transpose(2, 3)  # (batch, 1, mel, time)
        patch = patch_shape(self.config.patch_size)
        patches = F.unfold(spectrogram, kernel_size=patch, stride=patch)
        patches = patches.transpose(1, 2)  # (batch, num_patches, patch_pixels), frequency-major like the tokens

        def targets(index):
            return patches.gather(1, index[:, :, None].expand(-1, -1, patches.shape[-1]))

        hidden_states = None
        loss = 0.0
        nce = accuracy = mse = None
        if self.config.discriminative_loss_weight > 0:
            encoded, hidden_states = self._encode_masked(input_values, mask_index, output_hidden_states)
            prediction = self.discriminative_head(encoded).float()  # (batch, M, P)
            # scores[b, i, j] = <true patch i, predicted patch j>; patch i should pick prediction i
            scores = torch.bmm(targets(mask_index).detach().float(), prediction.transpose(1, 2))
            nce = -torch.diagonal(F.log_softmax(scores, dim=-1), dim1=1, dim2=2).mean()
            accuracy = discriminative_accuracy(scores)
            loss = loss + self.config.discriminative_loss_weight * nce
        if self.config.generative_loss_weight > 0:
            encoded, generative_hidden = self._encode_masked(input_values, generative_mask_index, output_hidden_states)
            hidden_states = hidden_states if hidden_states is not None else generative_hidden
            reconstruction = self.generative_head(encoded).float()
            mse = F.mse_loss(reconstruction, targets(generative_mask_index).float())
            loss = loss + self.config.generative_loss_weight * mse
        if not return_dict:
            return tuple(v for v in (loss, nce, mse, accuracy, hidden_states) if v is not None)
        return SSAMBAForPreTrainingOutput(
            loss=loss, discriminative_loss=nce, generative_loss=mse, discriminative_accuracy=accuracy,
            hidden_states=hidden_states,
        )


__all__ = [
    "SSAMBAPreTrainedModel",
    "SSAMBAModel",
    "SSAMBAForAudioClassification",
    "SSAMBAForAudioFrameClassification",
    "SSAMBAForPreTraining",
    "SSAMBAForPreTrainingOutput",
    "cluster_mask_indices",
    "discriminative_accuracy",
    "resize_grid_embeddings",
]
