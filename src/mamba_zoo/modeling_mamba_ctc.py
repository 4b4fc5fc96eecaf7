# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""MambaForCTC: ConMamba-style speech recognition with CTC.

log-mel fbank `(batch, frames, num_mel_bins)` -> `MambaCTCSubsampling` (Conv2d stride 2 blocks, 4x) ->
bidirectional Mamba encoder (Vim "v2" mixer from `mamba_layers.py`; plain Mamba blocks or ConMamba blocks) ->
`lm_head` -> CTC loss with Wav2Vec2ForCTC's conventions (blank = `pad_token_id`, labels padded with -100,
`ctc_loss_reduction`, `ctc_zero_infinity`, `config.inputs_to_logits_ratio` for the chunked ASR pipeline).

Padding never changes another sample's output: padded frames are zeroed before every convolution, the mixers zero
them before the scan, and the backward branch reverses each sequence within its own length.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

from .configuration_mamba_ctc import MambaCTCConfig
from .cpu_inference import inference_workspace
from .mamba_layers import DropPath, Mamba2Mixer, MambaBlock, MambaMixer, RMSNorm, build_mixer, build_norm
from .sequence_utils import check_attention_mask, check_labels, floating_input, mask_padding


def subsampled_lengths(lengths: torch.Tensor, num_layers: int) -> torch.Tensor:
    """Valid lengths after `num_layers` Conv(kernel 3, stride 2, padding 1) layers: `ceil(length / 2)` each."""
    for _ in range(num_layers):
        lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
    return lengths


def lengths_to_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """`(batch,)` lengths -> right-padded `(batch, max_length)` long mask."""
    return (torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]).long()


def _features_argument(input_features: Optional[torch.Tensor], input_values: Optional[torch.Tensor]) -> torch.Tensor:
    """`input_features`, or `input_values` (Wav2Vec2ForCTC's name for the model input) as an alias of it."""
    if input_features is not None and input_values is not None:
        raise ValueError("Pass the fbank features once: as input_features or as input_values (its alias), not both.")
    if input_features is None and input_values is None:
        raise ValueError("MambaForCTC needs input_features (batch, frames, num_mel_bins) (or input_values, its alias).")
    return input_features if input_features is not None else input_values


# Without gradients, a long unpadded input runs through the subsampler this many output frames at a time.
SUBSAMPLING_BLOCK_OUTPUTS = 512


class MambaCTCSubsampling(nn.Module):
    """Convolutional subsampling: `num_subsampling_layers` x [Conv2d(kernel 3, stride 2, padding 1) -> activation]
    over (time, mel), then a linear projection of (channels x remaining mel bins) to `hidden_size` and dropout.

    `(batch, frames, num_mel_bins)` -> `(batch, ceil(frames / 2**k), hidden_size)`. Padded frames are zeroed before
    each convolution, so a sample's valid outputs do not depend on how much padding follows it.
    """

    def __init__(self, config: MambaCTCConfig):
        super().__init__()
        channels = config.subsampling_conv_channels
        self.convs = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, kernel_size=3, stride=2, padding=1)
            for i in range(config.num_subsampling_layers)
        )
        self.activation = ACT2FN[config.hidden_act]
        freq = config.num_mel_bins
        for _ in range(config.num_subsampling_layers):
            freq = (freq + 1) // 2
        self.out = nn.Linear(channels * freq, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """input_features `(batch, frames, mel)`, lengths `(batch,)` -> `(batch, frames', hidden_size)`."""
        if self._blocks_apply(input_features, lengths):
            return self._forward_in_time_blocks(input_features)
        hidden = input_features.unsqueeze(1)  # (batch, 1, frames, mel)
        for conv in self.convs:
            mask = lengths_to_mask(lengths, hidden.shape[2]).to(hidden.dtype)
            hidden = self.activation(conv(hidden * mask[:, None, :, None]))
            lengths = subsampled_lengths(lengths, 1)
        batch, channels, frames, freq = hidden.shape
        hidden = hidden.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq)
        return self.dropout(self.out(hidden))

    def _blocks_apply(self, input_features: torch.Tensor, lengths: torch.Tensor) -> bool:
        """Long unpadded inputs without gradients, through plain convolutions, run in time blocks."""
        return (
            not torch.is_grad_enabled()
            and input_features.shape[1] > 2 * SUBSAMPLING_BLOCK_OUTPUTS * 2 ** len(self.convs)
            and bool((lengths == input_features.shape[1]).all())
            and all(type(conv) is nn.Conv2d and conv.padding == (1, 1) and conv.stride == (2, 2)
                    and conv.kernel_size == (3, 3) for conv in self.convs)
        )

    def _forward_in_time_blocks(self, input_features: torch.Tensor) -> torch.Tensor:
        """The subsampler over a long unpadded input, `SUBSAMPLING_BLOCK_OUTPUTS` output frames at a time: each block
        recomputes the few frames its receptive field shares with the next, and the zero padding of the convolutions
        is applied only at the true ends of the sequence, so the result equals the one-pass forward while the wide
        first-layer activations stay O(block) (they are channels x frames / 2 x mel / 2: 16x the input for 32
        channels)."""
        features = input_features.unsqueeze(1)  # (batch, 1, frames, mel)
        sizes = [features.shape[2]]
        for _ in self.convs:
            sizes.append((sizes[-1] + 1) // 2)

        def rows(layer: int, start: int, stop: int) -> torch.Tensor:
            """Output frames [start, stop) of conv `layer` (-1: the input)."""
            if layer < 0:
                return features[:, :, start:stop]
            conv = self.convs[layer]
            low, high = 2 * start - 1, 2 * stop  # the input frames that kernel 3 / stride 2 / padding 1 reads
            inputs = rows(layer - 1, max(low, 0), min(high, sizes[layer]))
            inputs = nn.functional.pad(inputs, (0, 0, max(0, -low), max(0, high - sizes[layer])))
            return self.activation(nn.functional.conv2d(inputs, conv.weight, conv.bias, stride=2, padding=(0, 1)))

        last = len(self.convs) - 1
        output = None
        for start in range(0, sizes[-1], SUBSAMPLING_BLOCK_OUTPUTS):
            stop = min(start + SUBSAMPLING_BLOCK_OUTPUTS, sizes[-1])
            hidden = rows(last, start, stop)
            batch, channels, frames, freq = hidden.shape
            block = self.out(hidden.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq))
            if output is None:
                output = block.new_empty(batch, sizes[-1], block.shape[-1])
            output[:, start:stop] = block
        return self.dropout(output)


class MambaCTCFeedForward(nn.Module):
    """ConMamba/Conformer feed-forward module: LayerNorm -> Linear -> act -> dropout -> Linear -> dropout.
    `(batch, L, hidden)` -> `(batch, L, hidden)`."""

    def __init__(self, config: MambaCTCConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.dropout(self.activation(self.fc1(self.layer_norm(hidden_states))))
        return self.dropout(self.fc2(hidden_states))


class MambaCTCConvModule(nn.Module):
    """Conformer/ConMamba convolution module: LayerNorm -> pointwise (2x) -> GLU -> depthwise conv (non-causal,
    `conv_module_kernel_size`) -> LayerNorm -> act -> pointwise -> dropout. LayerNorm replaces the usual BatchNorm so
    that a sample's output never depends on the rest of the batch. `(batch, L, hidden)` -> `(batch, L, hidden)`."""

    def __init__(self, config: MambaCTCConfig):
        super().__init__()
        hidden = config.hidden_size
        self.layer_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.pointwise_in = nn.Linear(hidden, 2 * hidden)
        self.depthwise_conv = nn.Conv1d(hidden, hidden, config.conv_module_kernel_size, groups=hidden,
                                        padding=config.conv_module_kernel_size // 2)
        self.depthwise_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.activation = ACT2FN[config.hidden_act]
        self.pointwise_out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden_states = nn.functional.glu(self.pointwise_in(self.layer_norm(hidden_states)), dim=-1)
        hidden_states = mask_padding(hidden_states, attention_mask)  # padding must not leak through the conv
        hidden_states = self.depthwise_conv(hidden_states.transpose(1, 2)).transpose(1, 2)
        hidden_states = self.activation(self.depthwise_norm(hidden_states))
        return self.dropout(self.pointwise_out(hidden_states))


class ConMambaBlock(GradientCheckpointingLayer):
    """ConMamba encoder block (Jiang et al. 2024): the Conformer block with self-attention replaced by a bidirectional
    Mamba mixer.

    `x = x + 1/2 FFN(x)`; `x = x + Mixer(LN(x))`; `x = x + Conv(x)`; `x = LN(x + 1/2 FFN(x))`, each residual branch
    under stochastic depth. `(batch, L, hidden)` -> `(batch, L, hidden)`.
    """

    def __init__(self, config: MambaCTCConfig, layer_idx: int, drop_path: float = 0.0):
        super().__init__()
        self.ffn1 = MambaCTCFeedForward(config)
        self.norm = build_norm(config.norm_type, config.hidden_size, config.layer_norm_eps)
        self.mixer = build_mixer(config, layer_idx, bidirectional=True)
        self.conv_module = MambaCTCConvModule(config)
        self.ffn2 = MambaCTCFeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden_states = hidden_states + 0.5 * self.drop_path(self.ffn1(hidden_states))
        hidden_states = hidden_states + self.drop_path(self.mixer(self.norm(hidden_states), attention_mask=attention_mask))
        hidden_states = hidden_states + self.drop_path(self.conv_module(hidden_states, attention_mask))
        return self.final_layer_norm(hidden_states + 0.5 * self.drop_path(self.ffn2(hidden_states)))


class MambaCTCPreTrainedModel(PreTrainedModel):
    config_class = MambaCTCConfig
    config: MambaCTCConfig
    base_model_prefix = "model"
    main_input_name = "input_features"
    input_modalities = "audio"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MambaBlock", "ConMambaBlock"]

    def _init_weights(self, module):
        """Linear layers: normal(initializer_range); convolutions: PyTorch's kaiming-uniform; norms: ones/zeros;
        mixers: mamba-ssm's A_log / D / dt initialisation (runs after their child Linear layers)."""
        super()._init_weights(module)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, (MambaMixer, Mamba2Mixer)):
            module.init_ssm_parameters()

    def _get_feat_extract_output_lengths(self, input_lengths: Union[torch.LongTensor, int]):
        """Encoder frames for `input_lengths` fbank frames (`ceil(frames / 2**num_subsampling_layers)`)."""
        if isinstance(input_lengths, int):
            return subsampled_lengths(torch.tensor(input_lengths), self.config.num_subsampling_layers).item()
        return subsampled_lengths(input_lengths, self.config.num_subsampling_layers)

    def _get_feature_vector_attention_mask(self, feature_vector_length: int, attention_mask: torch.Tensor):
        """Frame-level `(batch, frames)` mask -> encoder-level `(batch, feature_vector_length)` mask."""
        lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1).long())
        return lengths_to_mask(lengths, feature_vector_length)


class MambaCTCModel(MambaCTCPreTrainedModel):
    """The bare encoder: fbank features -> subsampling -> bidirectional Mamba (or ConMamba) blocks -> hidden states."""

    def __init__(self, config: MambaCTCConfig):
        super().__init__(config)
        self.subsampling = MambaCTCSubsampling(config)
        # stochastic depth rising linearly to drop_path_rate, in plain Python (no tensor: builds on the meta device)
        depth = config.num_hidden_layers
        drop_path = [config.drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        if config.block_type == "conmamba":
            self.layers = nn.ModuleList(
                ConMambaBlock(config, layer_idx=i, drop_path=drop_path[i]) for i in range(config.num_hidden_layers)
            )
            self.norm_f = None
        else:
            self.layers = nn.ModuleList(
                MambaBlock(config.hidden_size, build_mixer(config, i, bidirectional=True), norm_type=config.norm_type,
                           norm_eps=config.layer_norm_eps, drop_path=drop_path[i],
                           residual_in_fp32=config.residual_in_fp32)
                for i in range(config.num_hidden_layers)
            )
            self.norm_f = build_norm(config.norm_type, config.hidden_size, config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def _mask_input_features(self, input_features: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """SpecAugment (training only): zero random time spans and mel bands, as Wav2Vec2's `_mask_hidden_states`;
        inputs shorter than a span are left unmasked."""
        if not self.config.apply_spec_augment or not self.training:
            return input_features
        batch, frames, bins = input_features.shape
        if self.config.mask_time_prob > 0 and frames > self.config.mask_time_length:
            time_mask = _compute_mask_indices(
                (batch, frames), mask_prob=self.config.mask_time_prob, mask_length=self.config.mask_time_length,
                attention_mask=attention_mask, min_masks=self.config.mask_time_min_masks,
            )
            time_mask = torch.tensor(time_mask, device=input_features.device, dtype=torch.bool)
            input_features = input_features.masked_fill(time_mask[:, :, None], 0.0)
        if self.config.mask_feature_prob > 0 and bins > self.config.mask_feature_length:
            feature_mask = _compute_mask_indices(
                (batch, bins), mask_prob=self.config.mask_feature_prob, mask_length=self.config.mask_feature_length,
                min_masks=self.config.mask_feature_min_masks,
            )
            feature_mask = torch.tensor(feature_mask, device=input_features.device, dtype=torch.bool)
            input_features = input_features.masked_fill(feature_mask[:, None, :], 0.0)
        return input_features

    def forward(
        self,
        input_features: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        input_values: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Union[tuple, BaseModelOutput]:
        """
        Args:
            input_features: `(batch, frames, num_mel_bins)` from `MambaCTCFeatureExtractor`; floating inputs of any
                precision are cast to the model's dtype.
            attention_mask: `(batch, frames)`, 1 = frame, 0 = padding (right padding only, no empty rows). `None` =
                all valid.
            output_hidden_states: also return the subsampled input and the output of every block.
            input_values: the same features under the name `Wav2Vec2ForCTC` users pass (give one of the two).

        Returns:
            `BaseModelOutput` with `last_hidden_state` `(batch, ceil(frames / 4), hidden_size)` (padded positions are
            zero) and optionally `hidden_states` (`num_hidden_layers + 1` tensors of that shape).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        input_features = _features_argument(input_features, input_values)
        input_features = floating_input(input_features, self.subsampling.convs[0].weight.dtype, "input_features")
        if input_features.ndim != 3 or input_features.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must be (batch, frames, num_mel_bins={self.config.num_mel_bins}), got "
                f"{tuple(input_features.shape)}."
            )
        batch, frames, _ = input_features.shape
        check_attention_mask(attention_mask, batch, frames)
        if attention_mask is None:
            lengths = torch.full((batch,), frames, device=input_features.device, dtype=torch.long)
        else:
            lengths = attention_mask.sum(-1).long()
        input_features = self._mask_input_features(input_features, attention_mask)

        hidden_states = self.subsampling(input_features, lengths)
        encoder_mask = lengths_to_mask(self._get_feat_extract_output_lengths(lengths), hidden_states.shape[1])
        hidden_states = mask_padding(hidden_states, encoder_mask)
        mixer_mask = encoder_mask if attention_mask is not None else None

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        residual = None
        with inference_workspace():  # no-grad CPU mixers share their scratch buffers across layers
            for layer in self.layers:
                if self.norm_f is None:
                    hidden_states = layer(hidden_states, attention_mask=mixer_mask)
                    stream = hidden_states
                else:
                    hidden_states, residual = layer(hidden_states, residual, attention_mask=mixer_mask)
                    stream = hidden_states + residual
                if output_hidden_states:
                    all_hidden_states += (mask_padding(stream, encoder_mask),)
        if self.norm_f is not None:
            hidden_states = self.norm_f((hidden_states + residual).to(self.norm_f.weight.dtype))
        hidden_states = mask_padding(hidden_states, encoder_mask)

        if not return_dict:
            return tuple(v for v in (hidden_states, all_hidden_states) if v is not None)
        return BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states)


class MambaForCTC(MambaCTCPreTrainedModel):
    """`MambaCTCModel` with dropout and a linear `lm_head` over the characters, trained with CTC.

    Works with `pipeline("automatic-speech-recognition")` (greedy CTC; chunking through
    `config.inputs_to_logits_ratio`) and `Trainer`. The loss is CTC, not token-averaged cross-entropy, so
    `accepts_loss_kwargs = False` keeps Trainer's gradient-accumulation scaling right.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: MambaCTCConfig):
        super().__init__(config)
        self.model = MambaCTCModel(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def _check_labels(self, labels: torch.Tensor, batch: int) -> None:
        """Labels: `(batch, target_length)` integer ids in `[0, vocab_size)`, or -100 for padding."""
        check_labels(labels, self.config.vocab_size, pad_token_id=self.config.pad_token_id)
        if labels.ndim != 2 or labels.shape[0] != batch:
            raise ValueError(f"labels must be (batch={batch}, target_length), got shape {tuple(labels.shape)}.")

    def freeze_feature_encoder(self):
        """Stop gradients into the convolutional subsampling (Wav2Vec2ForCTC's name for the same step)."""
        for param in self.model.subsampling.parameters():
            param.requires_grad = False

    def freeze_base_model(self):
        """Train only `lm_head`."""
        for param in self.model.parameters():
            param.requires_grad = False

    def forward(
        self,
        input_features: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        input_values: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> Union[tuple, CausalLMOutput]:
        """
        Args:
            input_features: `(batch, frames, num_mel_bins)` (or `input_values`, Wav2Vec2ForCTC's name; one of the two).
            attention_mask: `(batch, frames)` frame-level 0/1 mask (right padding, no empty rows).
            labels: `(batch, target_length)` character ids, padded with -100 (or the blank `pad_token_id`); every
                other id must be in `[0, vocab_size)`. CTC needs `target_length` (plus repeats) <= the logit frames;
                shorter inputs give an infinite loss (zeroed only when `config.ctc_zero_infinity`, off by default).

        Returns:
            `CausalLMOutput` with `logits` `(batch, ceil(frames / 4), vocab_size)` (padded frames: the blank, with
            logit 0, every other token -1e4), `loss` (scalar, or `(batch,)` with
            `ctc_loss_reduction="none"`) when `labels` are given, and optionally `hidden_states`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        input_features = _features_argument(input_features, input_values)
        outputs = self.model(input_features, attention_mask=attention_mask,
                             output_hidden_states=output_hidden_states, return_dict=True)
        if labels is not None:
            self._check_labels(labels, outputs.last_hidden_state.shape[0])
        logits = self.lm_head(self.dropout(outputs.last_hidden_state))
        if attention_mask is not None:
            # padded frames predict the blank, so greedy decoding of a padded batch equals decoding each sample alone
            frame_mask = self._get_feature_vector_attention_mask(logits.shape[1], attention_mask).bool()
            blank = torch.full_like(logits[:1, :1], -1e4)
            blank[..., self.config.pad_token_id] = 0.0
            logits = torch.where(frame_mask[..., None], logits, blank)

        loss = None
        if labels is not None:
            if attention_mask is None:
                attention_mask = torch.ones(input_features.shape[:2], dtype=torch.long, device=input_features.device)
            logit_lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1).long())
            labels = labels.to(logits.device)
            labels_mask = (labels >= 0) & (labels != self.config.pad_token_id)
            target_lengths = labels_mask.sum(-1)
            flattened_targets = labels.masked_select(labels_mask)
            # ctc_loss needs float32 log-probs (time, batch, vocab)
            log_probs = nn.functional.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)
            with torch.backends.cudnn.flags(enabled=False):
                loss = nn.functional.ctc_loss(
                    log_probs, flattened_targets, logit_lengths, target_lengths, blank=self.config.pad_token_id,
                    reduction=self.config.ctc_loss_reduction, zero_infinity=self.config.ctc_zero_infinity,
                )

        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = ["MambaCTCModel", "MambaCTCPreTrainedModel", "MambaForCTC", "ConMambaBlock"]
