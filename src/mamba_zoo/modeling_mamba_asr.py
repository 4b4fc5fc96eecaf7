# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""MambaDecoderOnlyASR: MADEON (Masuyama et al., SLT 2024, arXiv 2411.06968) as a transformers model.

One Mamba (or Mamba-2) stack reads `<sos> <speech> o_1 .. o_Ls <generatetext> w_1 .. w_Lt <eos>` and predicts the
text tokens; the speech prefix `<sos> <speech> o_1 .. o_Ls` can be read bidirectionally (speech prefixing, SP) while
the text stays causal, so decoding keeps a fixed-size state per layer (and branch) and steps one token at a time.

Layout with padding: each sample is packed contiguously, `[prefix_b | text_b | padding]`, so padding only ever sits at
the end of a row (after everything that sample reads), and the prefix reversal of SP covers `[0, prefix_length_b)`.
Cached prefill runs samples of different lengths in groups of equal length, so a state never passes over padding.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, GenerationMixin, LogitsProcessorList, PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import ModelOutput

from .configuration_mamba_asr import MambaASRConfig
from .cpu_decode import add_rms_norm_decode, decode_linear
from .cpu_inference import inference_workspace
from .ctc_prefix_scoring import CTCPrefixScoreLogitsProcessor, CTCPrefixScorer
from .mamba_cache import MambaZooCache, resolve_cache_kwarg
from .mamba_layers import Mamba2Mixer, MambaBlock, MambaMixer, build_mixer, build_norm
from .sequence_utils import check_attention_mask, check_labels, check_token_ids, floating_input


@dataclass
class MambaASRModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state: `(batch, text_len, hidden_size)`, final-norm hidden states at the text positions (aligned
            with `input_ids`).
        cache: the `MambaZooCache` after this call (with `use_cache=True`).
        hidden_states: with `output_hidden_states`, the embeddings and every block's output over the packed sequence,
            each `(batch, packed_len, hidden_size)` (the last one after the final norm).
        prefix_lengths: `(batch,)` length of each sample's prefix `<sos> <speech> o_1 .. o_Ls` (None when stepping).
        speech_hidden_state: `(batch, Ls, hidden_size)` final-norm hidden states at the speech positions `o_1 .. o_Ls`
            (zero past each sample's speech length; None when stepping).
        speech_lengths: `(batch,)` speech positions per sample (after subsampling; None when stepping).
    """

    last_hidden_state: Optional[torch.Tensor] = None
    cache: Optional[MambaZooCache] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None
    prefix_lengths: Optional[torch.Tensor] = None
    speech_hidden_state: Optional[torch.Tensor] = None
    speech_lengths: Optional[torch.Tensor] = None


@dataclass
class MambaASROutput(ModelOutput):
    """
    Args:
        loss: cross-entropy of the next text token, averaged over the text tokens with a label (`labels != -100`);
            with `config.ctc_loss_weight > 0`, `(1 - w) * cross-entropy + w * ctc_loss`.
        logits: `(batch, text_len, vocab_size)` (or the last `logits_to_keep` positions).
        ctc_loss: the CTC loss of the speech-prefix states against the transcript (with a CTC head and labels).
        ctc_logits: `(batch, Ls * ctc_upsample, vocab_size)` CTC logits of the speech prefix (with a CTC head).
        cache, hidden_states, prefix_lengths: as in `MambaASRModelOutput`.
    """

    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    ctc_loss: Optional[torch.Tensor] = None
    ctc_logits: Optional[torch.Tensor] = None
    cache: Optional[MambaZooCache] = None
    hidden_states: Optional[tuple[torch.Tensor, ...]] = None
    prefix_lengths: Optional[torch.Tensor] = None


class MambaASRSubsampler(nn.Module):
    """Log-mel frames `(batch, frames, num_mel_bins)` -> `(batch, frames', hidden_size)` with Conv2d(k3, s2, no padding)
    + SiLU blocks and a linear projection. Without padding, output frame `j < frames'` only sees valid input frames,
    so right-padding never changes a sample's output."""

    def __init__(self, config: MambaASRConfig):
        super().__init__()
        channels = config.subsampling_conv_channels
        layers = []
        freq = config.num_mel_bins
        for i in range(config.num_subsampling_layers):
            layers += [nn.Conv2d(1 if i == 0 else channels, channels, kernel_size=3, stride=2), nn.SiLU()]
            freq = (freq - 3) // 2 + 1
        if freq <= 0:
            raise ValueError(f"num_mel_bins={config.num_mel_bins} is too small for {config.num_subsampling_layers} subsampling layers.")
        self.conv = nn.Sequential(*layers)
        self.out = nn.Linear(channels * freq, config.hidden_size)
        self.num_layers = config.num_subsampling_layers

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_layers):
            lengths = torch.div(lengths - 3, 2, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        min_frames = 2 ** (self.num_layers + 1) - 1
        if features.shape[1] < min_frames:
            raise ValueError(f"input_features need at least {min_frames} frames, got {features.shape[1]}.")
        hidden = self.conv(features.unsqueeze(1))  # (batch, channels, frames', freq')
        hidden = self.out(hidden.permute(0, 2, 1, 3).flatten(2))
        return hidden, self.output_lengths(lengths)


class MambaASRPreTrainedModel(PreTrainedModel):
    config_class = MambaASRConfig
    config: MambaASRConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MambaBlock"]
    _is_stateful = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, (MambaMixer, Mamba2Mixer)):
            module.init_ssm_parameters()
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                init.zeros_(module.bias)


class MambaASRModel(MambaASRPreTrainedModel):
    """The MADEON stack without the LM head: packs `[<sos> <speech> speech | text]` per sample, runs the blocks (with
    speech prefixing) and returns the hidden states at the text positions."""

    def __init__(self, config: MambaASRConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.subsampler = MambaASRSubsampler(config) if config.speech_input == "features" else None
        bidirectional = config.speech_prefix == "parallel"
        drop_path = [config.drop_path_rate * i / max(config.num_hidden_layers - 1, 1) for i in range(config.num_hidden_layers)]
        self.layers = nn.ModuleList([
            MambaBlock(config.hidden_size, build_mixer(config, i, bidirectional), norm_type=config.norm_type,
                       norm_eps=config.layer_norm_eps, drop_path=drop_path[i], residual_in_fp32=config.residual_in_fp32)
            for i in range(config.num_hidden_layers)
        ])
        self.norm_f = build_norm(config.norm_type, config.hidden_size, config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings

    def set_input_embeddings(self, value):
        self.embeddings = value

    @property
    def states_per_layer(self) -> list[int]:
        return [2 if self.config.speech_prefix == "parallel" else 1] * self.config.num_hidden_layers

    def make_cache(self) -> MambaZooCache:
        """An empty inference cache for this model (both branches per layer with parallel speech prefixing)."""
        return MambaZooCache(self.states_per_layer)

    # ------------------------------------------------------------------------------------------------ speech prefix

    def embed_speech(self, speech_ids=None, input_features=None, speech_attention_mask=None):
        """Speech embeddings `(batch, Ls, hidden)` and valid lengths `(batch,)` from units or log-mel frames."""
        if (speech_ids is None) == (input_features is None):
            raise ValueError(
                "Pass exactly one speech prefix: `speech_ids` (discrete units, speech_input='units') or "
                "`input_features` (log-mel frames, speech_input='features')."
            )
        if speech_ids is not None:
            if self.config.speech_input != "units":
                raise ValueError("This model reads log-mel `input_features` (speech_input='features'), not `speech_ids`.")
            if speech_ids.ndim != 2:
                raise ValueError(f"speech_ids must be (batch, Ls), got shape {tuple(speech_ids.shape)}.")
            check_token_ids(speech_ids, self.embeddings.num_embeddings, "speech_ids")
            check_attention_mask(speech_attention_mask, *speech_ids.shape, name="speech_attention_mask")
            lengths = (speech_attention_mask.sum(-1) if speech_attention_mask is not None
                       else torch.full((speech_ids.shape[0],), speech_ids.shape[1], device=speech_ids.device))
            return self.embeddings(speech_ids), lengths.long()
        if self.config.speech_input != "features":
            raise ValueError("This model reads discrete `speech_ids` (speech_input='units'), not `input_features`.")
        hidden = floating_input(input_features, self.embeddings.weight.dtype, "input_features")
        if input_features.ndim != 3 or input_features.shape[-1] != self.config.num_mel_bins:
            raise ValueError(
                f"input_features must be (batch, frames, num_mel_bins={self.config.num_mel_bins}), got "
                f"{tuple(input_features.shape)}."
            )
        check_attention_mask(speech_attention_mask, *input_features.shape[:2], name="speech_attention_mask")
        lengths = (speech_attention_mask.sum(-1) if speech_attention_mask is not None
                   else torch.full((input_features.shape[0],), input_features.shape[1], device=input_features.device))
        return self.subsampler(hidden, lengths.long())

    def _mask_speech_embeddings(self, speech_embeds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Input-embedding masking (training only): zero random spans of `speech_mask_length` speech positions."""
        prob, span = self.config.speech_mask_prob, self.config.speech_mask_length
        if not self.training or prob <= 0:
            return speech_embeds
        batch, length, _ = speech_embeds.shape
        starts = torch.rand(batch, length, device=speech_embeds.device) < prob
        # position t is masked when a span started in [t - span + 1, t]
        masked = F.max_pool1d(F.pad(starts.float()[:, None], (span - 1, 0)), kernel_size=span, stride=1)[:, 0]
        masked = masked.bool() & (torch.arange(length, device=lengths.device)[None] < lengths[:, None])
        return speech_embeds.masked_fill(masked[:, :, None], 0.0)

    def _pack(self, speech_embeds, speech_lengths, text_embeds, text_lengths):
        """Per sample `[<sos> <speech> speech[:Ls] | text[:Lt]]`, right-padded.

        Returns packed `(batch, L, hidden)`, mask `(batch, L)`, prefix lengths `(batch,)` and the packed position of
        every text token `(batch, text_len)`.
        """
        batch, max_speech, _ = speech_embeds.shape
        device = speech_embeds.device
        specials = self.embeddings(torch.tensor([self.config.bos_token_id, self.config.speech_token_id], device=device))
        source = torch.cat([specials[None].expand(batch, -1, -1), speech_embeds.to(specials.dtype), text_embeds], dim=1)
        prefix_lengths = speech_lengths + 2
        total = prefix_lengths + text_lengths
        length = int(total.max())
        positions = torch.arange(length, device=device)[None, :]
        in_text = positions >= prefix_lengths[:, None]
        index = torch.where(in_text, positions - prefix_lengths[:, None] + 2 + max_speech, positions)
        mask = positions < total[:, None]
        index = torch.where(mask, index, torch.zeros_like(index))
        packed = source.gather(1, index[:, :, None].expand(-1, -1, source.shape[-1]))
        packed = packed * mask[:, :, None].to(packed.dtype)
        text_positions = prefix_lengths[:, None] + torch.arange(text_embeds.shape[1], device=device)[None, :]
        return packed, mask.long(), prefix_lengths, text_positions.clamp(max=length - 1)

    # ------------------------------------------------------------------------------------------------ blocks

    def _run_blocks(self, hidden, attention_mask, prefix_lengths, cache, output_hidden_states):
        """hidden `(batch, L, hidden)` -> final-norm hidden `(batch, L, hidden)` (+ all hidden states)."""
        # speech prefixing: "parallel" = bidirectional mixers whose backward branch reverses the prefix only;
        # "serial" = odd layers read the prefix reversed (the text after it keeps its order). Cached decoding steps
        # (no prefix_lengths) are causal.
        serial = prefix_lengths is not None and self.config.speech_prefix == "serial"
        all_hidden = (hidden,) if output_hidden_states else None
        residual = None
        with inference_workspace():  # no-grad CPU mixers share their scratch buffers across layers
            for i, block in enumerate(self.layers):
                hidden, residual = block(hidden, residual, attention_mask=attention_mask, cache=cache,
                                         reverse_lengths=prefix_lengths, reverse=serial and i % 2 == 1)
                if output_hidden_states and i < len(self.layers) - 1:
                    all_hidden += (residual + hidden,)
        fused = add_rms_norm_decode(self.norm_f, hidden, residual)  # a decoding step: one kernel
        hidden = fused[0] if fused is not None else self.norm_f((residual + hidden).to(self.norm_f.weight.dtype))
        if output_hidden_states:
            all_hidden += (hidden,)
        return hidden, all_hidden

    def _prefill_in_groups(self, packed, mask, prefix_lengths, cache, output_hidden_states):
        """Cached prefill without padding in any state: samples of equal length run together, each group with its
        own cache, whose states are then gathered into `cache`."""
        total = mask.sum(-1)
        outputs = torch.zeros_like(packed)
        group_caches = []
        for length in torch.unique(total).tolist():
            rows = (total == length).nonzero()[:, 0]
            group_cache = self.make_cache()
            hidden, _ = self._run_blocks(packed[rows, :length], None, prefix_lengths[rows], group_cache, False)
            outputs[rows, :length] = hidden
            group_caches.append((rows, group_cache))
        for layer_idx, num_states in enumerate(self.states_per_layer):
            for state_idx in range(num_states):
                for getter, setter in ((MambaZooCache.get_conv_state, cache.update_conv_state),
                                       (MambaZooCache.get_recurrent_state, cache.update_recurrent_state)):
                    first = getter(group_caches[0][1], layer_idx, state_idx)
                    merged = first.new_zeros((packed.shape[0], *first.shape[1:]))
                    for rows, group_cache in group_caches:
                        merged[rows] = getter(group_cache, layer_idx, state_idx)
                    setter(merged, layer_idx, state_idx=state_idx)
        cache.advance(int(total.max()))
        return outputs, None

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        speech_ids: Optional[torch.LongTensor] = None,
        input_features: Optional[torch.FloatTensor] = None,
        speech_attention_mask: Optional[torch.LongTensor] = None,
        cache: Optional[MambaZooCache] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        **kwargs,
    ):
        """
        Args:
            input_ids: `(batch, text_len)` text tokens starting with `<generatetext>` (right-padded).
            inputs_embeds: `(batch, text_len, hidden_size)`: embeddings of the text part, instead of `input_ids`.
            attention_mask: `(batch, text_len)` 1 for text tokens, 0 for padding (right padding only, no empty
                rows). Read in the prefill only (a cached step reads its new tokens).
            speech_ids: `(batch, Ls)` discrete speech units (vocabulary ids), right-padded (speech_input="units").
            input_features: `(batch, frames, num_mel_bins)` log-mel frames, right-padded (speech_input="features");
                floating inputs of any precision are cast to the model's dtype.
            speech_attention_mask: `(batch, Ls)` or `(batch, frames)`: 1 for speech, 0 for padding (right padding
                only, no empty rows).
            cache: a `MambaZooCache`. Empty: the prefix and text are prefilled and the states stored. Filled: only
                `input_ids` (new text tokens) are read, stepping each layer's states one token at a time.
        Returns:
            `MambaASRModelOutput` (or a tuple with `return_dict=False`).
        """
        cache = resolve_cache_kwarg(cache, kwargs)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        use_cache = use_cache if use_cache is not None else (cache is not None)
        if use_cache and cache is None and not self.training:
            cache = self.make_cache()
        if not use_cache:
            cache = None
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "Pass exactly one of input_ids or inputs_embeds for the text part (starting with <generatetext>)."
            )
        if input_ids is not None and input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, text_len), got shape {tuple(input_ids.shape)}.")
        if inputs_embeds is not None and (inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.config.hidden_size):
            raise ValueError(
                f"inputs_embeds must be (batch, text_len, hidden_size={self.config.hidden_size}), got shape "
                f"{tuple(inputs_embeds.shape)}."
            )
        if inputs_embeds is None:
            text_embeds = self.embeddings(check_token_ids(input_ids, self.embeddings.num_embeddings))
        else:
            text_embeds = floating_input(inputs_embeds, self.embeddings.weight.dtype, "inputs_embeds")

        if cache is not None and cache.has_state(0):
            if speech_ids is not None or input_features is not None:
                raise ValueError("The cache already holds a speech prefix; pass only the new text tokens.")
            hidden, all_hidden = self._run_blocks(text_embeds, None, None, cache, output_hidden_states)
            output = MambaASRModelOutput(last_hidden_state=hidden, cache=cache, hidden_states=all_hidden)
            return output if return_dict else output.to_tuple()

        check_attention_mask(attention_mask, *text_embeds.shape[:2])
        speech_embeds, speech_lengths = self.embed_speech(speech_ids, input_features, speech_attention_mask)
        speech_embeds = self._mask_speech_embeddings(speech_embeds, speech_lengths)
        text_lengths = (attention_mask.sum(-1).long() if attention_mask is not None
                        else torch.full(text_embeds.shape[:1], text_embeds.shape[1], device=text_embeds.device))
        packed, mask, prefix_lengths, text_positions = self._pack(speech_embeds, speech_lengths, text_embeds, text_lengths)
        if cache is not None:
            hidden, all_hidden = self._prefill_in_groups(packed, mask, prefix_lengths, cache, output_hidden_states)
        else:
            hidden, all_hidden = self._run_blocks(packed, mask, prefix_lengths, None, output_hidden_states)
        # speech positions o_1 .. o_Ls sit at 2 .. 2 + Ls of every packed row
        speech_hidden = hidden[:, 2:2 + speech_embeds.shape[1]]
        speech_mask = torch.arange(speech_hidden.shape[1], device=hidden.device)[None, :] < speech_lengths[:, None]
        speech_hidden = speech_hidden * speech_mask[:, :, None].to(hidden.dtype)
        hidden = hidden.gather(1, text_positions[:, :, None].expand(-1, -1, hidden.shape[-1]))
        # padded text positions are zero, whatever else is in the batch (batch equivalence)
        text_mask = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < text_lengths[:, None]
        hidden = hidden * text_mask[:, :, None].to(hidden.dtype)
        output = MambaASRModelOutput(last_hidden_state=hidden, cache=cache, hidden_states=all_hidden,
                                     prefix_lengths=prefix_lengths, speech_hidden_state=speech_hidden,
                                     speech_lengths=speech_lengths)
        return output if return_dict else output.to_tuple()


class MambaDecoderOnlyASR(MambaASRPreTrainedModel, GenerationMixin):
    """MADEON: a decoder-only Mamba ASR model (`MambaASRModel` + tied LM head), with cached `generate()` that keeps the
    SSM states of both branches after the speech prefix and steps text tokens one at a time (O(1) memory per step).

    Generation: `model.generate(speech_ids=... | input_features=..., speech_attention_mask=...)` starts the text with
    `<generatetext>` and returns `<generatetext> w_1 .. <eos>`; decode with the processor's `batch_decode`.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}
    accepts_loss_kwargs = False
    # new tokens per transcript when neither the call nor the generation config says (transcripts are characters)
    default_max_new_tokens = 256

    def __init__(self, config: MambaASRConfig):
        super().__init__(config)
        self.model = MambaASRModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # joint CTC/decoder training: each speech-prefix state predicts `ctc_upsample` CTC frames
        self.ctc_head = (nn.Linear(config.hidden_size, config.ctc_upsample * config.vocab_size)
                         if config.ctc_loss_weight > 0 else None)
        # during generate(ctc_weight > 0): (joint-decoding processor, utterances) waiting for the prefill's CTC scores
        self._ctc_scores_sink = None
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def make_cache(self) -> MambaZooCache:
        return self.model.make_cache()

    def loss_function(self, logits: torch.Tensor, labels: Optional[torch.Tensor] = None,
                      shift_labels: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """Next-token cross-entropy on the text part: logits `(batch, T, V)` at position t predict `labels[:, t+1]`;
        positions with label -100 (padding, and `<generatetext>` itself) are ignored. With `shift_labels` (already
        shifted, as transformers' `ForCausalLMLoss` takes them for context-parallel training), position t predicts
        `shift_labels[:, t]` and `labels` is not read."""
        if shift_labels is None:
            check_labels(labels, logits.shape[-1], "labels")
            logits, shift_labels = logits[:, :-1], labels[:, 1:]
        else:
            check_labels(shift_labels, logits.shape[-1], "shift_labels")
            if shift_labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"shift_labels must be (batch, text_len) = {tuple(logits.shape[:2])} like the logits, got "
                    f"{tuple(shift_labels.shape)}."
                )
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               shift_labels.reshape(-1).to(logits.device), ignore_index=-100)

    def ctc_logits(self, speech_hidden: torch.Tensor) -> torch.Tensor:
        """`(batch, Ls, hidden)` speech-prefix states -> `(batch, Ls * ctc_upsample, vocab_size)` CTC logits."""
        batch, length, _ = speech_hidden.shape
        logits = self.ctc_head(speech_hidden.to(self.ctc_head.weight.dtype)).float()
        return logits.reshape(batch, length * self.config.ctc_upsample, self.config.vocab_size)

    def ctc_loss(self, ctc_logits: torch.Tensor, speech_lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """CTC of the speech prefix against the transcript: the labels' text tokens (not `<generatetext>`, `<eos>`,
        padding or -100), blank = `pad_token_id`; per-utterance losses divided by the target lengths, averaged
        (impossible alignments count 0, `zero_infinity`)."""
        special = {self.config.eos_token_id, self.config.generate_text_token_id, self.config.pad_token_id}
        keep = labels >= 0
        for token in special:
            keep &= labels != token
        targets = labels[keep]
        target_lengths = keep.sum(-1)
        log_probs = F.log_softmax(ctc_logits, dim=-1).transpose(0, 1)
        return F.ctc_loss(log_probs, targets, speech_lengths * self.config.ctc_upsample, target_lengths,
                          blank=self.config.pad_token_id, reduction="mean", zero_infinity=True)

    # the head repeats its base model's arguments (transformers convention)
    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        speech_ids: Optional[torch.LongTensor] = None,
        input_features: Optional[torch.FloatTensor] = None,
        speech_attention_mask: Optional[torch.LongTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        cache: Optional[MambaZooCache] = None,
        use_cache: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        logits_to_keep: int = 0,
        **kwargs,
    ):
        """
        Args: as `MambaASRModel.forward` (`inputs_embeds` included), plus
            labels: `(batch, text_len)`, usually `input_ids` with padding set to -100; the loss is the next-token
                cross-entropy over the text (token `t` predicts `labels[:, t + 1]`).
            shift_labels (keyword): `(batch, text_len)` targets already shifted (token `t` predicts
                `shift_labels[:, t]`), used instead of `labels` (transformers' context-parallel convention).
            logits_to_keep: compute logits only for the last `logits_to_keep` text positions (0 = all).
        Returns:
            `MambaASROutput`: loss, logits `(batch, text_len, vocab_size)`, cache, hidden_states, prefix_lengths.
        """
        kwargs.pop("num_items_in_batch", None)
        shift_labels = kwargs.pop("shift_labels", None)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, speech_ids=speech_ids, input_features=input_features,
            speech_attention_mask=speech_attention_mask, cache=cache, use_cache=use_cache,
            output_hidden_states=output_hidden_states, return_dict=True, inputs_embeds=inputs_embeds, **kwargs,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = decode_linear(self.lm_head, hidden.to(self.lm_head.weight.dtype)).float()
        loss = ctc_loss = ctc_logits = None
        if self.ctc_head is not None and outputs.speech_hidden_state is not None:
            ctc_logits = self.ctc_logits(outputs.speech_hidden_state)
            if self._ctc_scores_sink is not None:  # generate()'s prefill: the joint decoder reads these CTC scores
                processor, utterances = self._ctc_scores_sink
                self._ctc_scores_sink = None
                # generate() repeats each utterance num_beams (num_return_sequences) times, in consecutive rows
                every = max(1, ctc_logits.shape[0] // utterances)
                processor.attach(self._ctc_scorer(ctc_logits[::every], outputs.speech_lengths[::every]))
        if labels is not None or shift_labels is not None:
            loss = self.loss_function(logits, labels, shift_labels=shift_labels)
            if ctc_logits is not None and labels is not None:
                ctc_loss = self.ctc_loss(ctc_logits, outputs.speech_lengths, labels)
                weight = self.config.ctc_loss_weight
                loss = (1 - weight) * loss + weight * ctc_loss
        output = MambaASROutput(loss=loss, logits=logits, ctc_loss=ctc_loss, ctc_logits=ctc_logits,
                                cache=outputs.cache, hidden_states=outputs.hidden_states,
                                prefix_lengths=outputs.prefix_lengths)
        return output if return_dict else output.to_tuple()

    # ------------------------------------------------------------------------------------------------ generation

    def ctc_token_ids_excluded(self) -> list[int]:
        """Tokens the CTC head never emits as labels: the blank (`<pad>`), the other special tokens but `<eos>`, and
        the speech units."""
        config = self.config
        excluded = {config.pad_token_id, config.bos_token_id, config.speech_token_id, config.generate_text_token_id}
        if config.speech_input == "units":
            excluded.update(range(config.unit_token_offset, config.unit_token_offset + config.num_units))
        return sorted(t for t in excluded if t is not None and t != config.eos_token_id)

    def _ctc_scorer(self, ctc_logits: torch.Tensor, speech_lengths: torch.Tensor) -> CTCPrefixScorer:
        """A `CTCPrefixScorer` over CTC logits `(batch, Ls * ctc_upsample, vocab)` of speech prefixes of `speech_lengths`
        states."""
        return CTCPrefixScorer(torch.log_softmax(ctc_logits.detach().float(), dim=-1),
                               speech_lengths * self.config.ctc_upsample, blank_id=self.config.pad_token_id,
                               eos_token_id=self.config.eos_token_id, excluded_token_ids=self.ctc_token_ids_excluded())

    def _check_ctc_decoding(self, speech) -> None:
        if self.ctc_head is None:
            raise ValueError(
                "Joint CTC/attention decoding (ctc_weight > 0) needs the CTC head of a model trained with "
                "ctc_loss_weight > 0; this model has none. Decode with ctc_weight=0."
            )
        if speech is None:
            raise ValueError("generate() needs a speech prefix: pass `speech_ids` or `input_features`.")

    @torch.no_grad()
    def ctc_prefix_processor(self, ctc_weight: float, speech_ids=None, input_features=None,
                             speech_attention_mask=None) -> CTCPrefixScoreLogitsProcessor:
        """The joint CTC/attention `LogitsProcessor` for one batch of speech, for a decoding loop of your own: runs
        the speech prefix (with `<generatetext>` as its text) for the CTC head's log-probabilities `(batch,
        Ls * ctc_upsample, vocab)`. (`generate(ctc_weight=...)` takes them from its own prefill instead.)"""
        speech = speech_ids if speech_ids is not None else input_features
        self._check_ctc_decoding(speech)
        start = torch.full((speech.shape[0], 1), self.config.generate_text_token_id, dtype=torch.long,
                           device=speech.device)
        was_training = self.training
        self.eval()
        try:
            outputs = self.model(input_ids=start, speech_ids=speech_ids, input_features=input_features,
                                 speech_attention_mask=speech_attention_mask, use_cache=False, return_dict=True)
        finally:
            self.train(was_training)
        scorer = self._ctc_scorer(self.ctc_logits(outputs.speech_hidden_state), outputs.speech_lengths)
        return CTCPrefixScoreLogitsProcessor(scorer, ctc_weight, prompt_length=start.shape[1])

    def generate(self, *args, ctc_weight: Optional[float] = None, **kwargs):
        """`GenerationMixin.generate` plus joint CTC/attention decoding (ESPnet's `ctc_weight`).

        Args:
            ctc_weight: weight `w` of the CTC prefix score (`ctc_prefix_scoring`): hypotheses are ranked by
                `(1 - w) * log p_decoder + w * log p_ctc(prefix)` in greedy and beam search. Defaults to
                `config.ctc_decoding_weight`; 0 is the decoder alone. Needs a CTC head (`ctc_loss_weight > 0`).
                The text must start with `<generatetext>` alone (no `input_ids` prompt).
            other arguments: as `generate()` (`speech_ids` / `input_features`, `speech_attention_mask`, `num_beams`,
                `max_new_tokens`, ...). Without `max_new_tokens` / `max_length` here or in the generation config,
                up to `default_max_new_tokens` (256) characters are generated, not transformers' 20 tokens.
        """
        generation_config = kwargs.get("generation_config") or self.generation_config
        if ("max_new_tokens" not in kwargs and "max_length" not in kwargs and generation_config.max_new_tokens is None
                and generation_config.max_length == GenerationConfig().max_length):
            # transformers' default of 20 tokens in all would cut a character-level transcript mid-word, silently
            kwargs["max_new_tokens"] = self.default_max_new_tokens
        weight = self.config.ctc_decoding_weight if ctc_weight is None else ctc_weight
        if not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
            raise ValueError(f"ctc_weight must be a number in [0, 1], got {weight!r}.")
        if weight > 0:
            prompt = args[0] if args else kwargs.get("input_ids", kwargs.get("inputs"))
            if prompt is not None and prompt.shape[1] != 1:
                raise ValueError("Joint CTC/attention decoding starts from <generatetext> alone: pass no text prompt.")
            speech = kwargs.get("speech_ids") if kwargs.get("speech_ids") is not None else kwargs.get("input_features")
            self._check_ctc_decoding(speech)
            # the CTC scores come from generate()'s own prefill (forward hands them to the processor): the speech
            # prefix runs once
            processor = CTCPrefixScoreLogitsProcessor(None, float(weight), prompt_length=1)
            self._ctc_scores_sink = (processor, speech.shape[0])
            kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), processor])
        try:
            return super().generate(*args, **kwargs)
        finally:
            self._ctc_scores_sink = None

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        """Always a `MambaZooCache` (never transformers' DynamicCache), unless the user passed one or use_cache=False."""
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return
        model_kwargs["cache"] = self.make_cache()

    def _maybe_initialize_input_ids_for_generation(self, inputs=None, bos_token_id=None, model_kwargs=None):
        """Without `input_ids`, the text starts with `<generatetext>` for every sample of the speech batch."""
        if inputs is not None:
            return inputs
        model_kwargs = model_kwargs or {}
        speech = model_kwargs.get("speech_ids")
        speech = speech if speech is not None else model_kwargs.get("input_features")
        if speech is None:
            raise ValueError("generate() needs a speech prefix: pass `speech_ids` or `input_features`.")
        return torch.full((speech.shape[0], 1), self.config.generate_text_token_id, dtype=torch.long,
                          device=speech.device)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Optional[MambaZooCache] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        speech_ids: Optional[torch.LongTensor] = None,
        input_features: Optional[torch.FloatTensor] = None,
        speech_attention_mask: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        logits_to_keep: Optional[int] = None,
        **kwargs,
    ):
        """Prefill (empty cache, or no cache): speech prefix + all text so far. Afterwards: only the newest token."""
        cache = resolve_cache_kwarg(cache, kwargs)
        model_inputs = {"cache": cache, "use_cache": use_cache}
        if logits_to_keep is not None:
            model_inputs["logits_to_keep"] = logits_to_keep
        if cache is not None and cache.has_state(0):
            model_inputs["input_ids"] = input_ids[:, -1:]
            return model_inputs
        model_inputs.update(input_ids=input_ids, attention_mask=attention_mask, speech_ids=speech_ids,
                            input_features=input_features, speech_attention_mask=speech_attention_mask)
        return model_inputs

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also save the ASR pipeline with the checkpoint: the config names it in `custom_pipelines`
        (`MambaASRConfig`) and this copies `pipeline_mamba_asr.py` and the files it imports, so
        `pipeline("automatic-speech-recognition", model=path, trust_remote_code=True)` builds it with or without
        mamba-zoo installed (per model: importing mamba_zoo registers no pipeline globally)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if getattr(self, "_auto_class", None) is not None and os.path.isdir(save_directory):
            # the model's own files are copied by transformers; the pipeline file and what it imports are not
            pipeline_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline_mamba_asr.py")
            for path in [pipeline_file, *get_relative_import_files(pipeline_file)]:
                shutil.copy(path, os.path.join(save_directory, os.path.basename(path)))
        return result


__all__ = ["MambaASRPreTrainedModel", "MambaASRModel", "MambaDecoderOnlyASR", "MambaASROutput", "MambaASRModelOutput"]
