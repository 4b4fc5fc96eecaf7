"""Tiny random instances of every model class of the zoo, shared by the conformance and Hub round-trip tests, and
`randomize`, the random parameter values the SSAMBA tests share."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from mamba_zoo import (
    BlackMambaConfig,
    BlackMambaForCausalLM,
    BlackMambaModel,
    MambaASRConfig,
    MambaASRModel,
    MambaCTCConfig,
    MambaCTCModel,
    MambaDecoderOnlyASR,
    MambaForCTC,
    SSAMBAConfig,
    SSAMBAForAudioClassification,
    SSAMBAForAudioFrameClassification,
    SSAMBAModel,
)


@dataclasses.dataclass
class Case:
    name: str
    model_class: type
    make_config: Callable[[], object]
    make_inputs: Callable[[torch.Generator], dict]
    is_text_model: bool = False
    # hidden states returned with output_hidden_states: the embeddings + one per layer
    num_hidden_states: Callable[[object], int] = lambda config: config.num_hidden_layers + 1


def _ssamba_config():
    return SSAMBAConfig(hidden_size=32, num_hidden_layers=4, num_mel_bins=32, max_length=48, drop_path_rate=0.0,
                        num_labels=3)


def _ctc_config():
    return MambaCTCConfig(vocab_size=16, num_mel_bins=80, hidden_size=32, num_hidden_layers=2,
                          subsampling_conv_channels=8, intermediate_size=64, state_size=8, apply_spec_augment=False,
                          hidden_dropout=0.0, final_dropout=0.0)


def _asr_config():
    return MambaASRConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, expand=2, state_size=8,
                          speech_input="units", num_units=20, unit_token_offset=40, speech_prefix="parallel")


def _blackmamba_config():
    return BlackMambaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=4, state_size=8, ffn_hidden_size=40,
                            num_experts=4, pad_token_id=1, bos_token_id=0, eos_token_id=0)


def _audio_patches(g):
    return {"input_values": torch.randn(3, 48, 32, generator=g)}


def _fbank(g):
    return {"input_features": torch.randn(3, 40, 80, generator=g)}


def _speech_and_text(g):
    text = torch.randint(6, 40, (3, 5), generator=g)
    text[:, 0] = 5  # <generatetext>
    return {"speech_ids": torch.randint(40, 60, (3, 9), generator=g), "input_ids": text}


def _tokens(g):
    return {"input_ids": torch.randint(2, 61, (3, 11), generator=g)}


CASES = [
    Case("ssamba", SSAMBAModel, _ssamba_config, _audio_patches),
    Case("ssamba-classification", SSAMBAForAudioClassification, _ssamba_config, _audio_patches),
    Case("ssamba-frame-classification", SSAMBAForAudioFrameClassification, _ssamba_config, _audio_patches),
    Case("mamba-ctc", MambaCTCModel, _ctc_config, _fbank),
    Case("mamba-for-ctc", MambaForCTC, _ctc_config, _fbank),
    Case("mamba-asr", MambaASRModel, _asr_config, _speech_and_text, is_text_model=True),
    Case("mamba-decoder-asr", MambaDecoderOnlyASR, _asr_config, _speech_and_text, is_text_model=True),
    Case("blackmamba", BlackMambaModel, _blackmamba_config, _tokens, is_text_model=True),
    Case("blackmamba-causal-lm", BlackMambaForCausalLM, _blackmamba_config, _tokens, is_text_model=True),
]


def randomize(model, seed=0, std=0.2, norm_weights_around_one=True):
    """Fresh random values everywhere (so that no check passes on init constants such as zero biases): A_log in
    [-0.5, 1.5), norm weights around 1 (unless ``norm_weights_around_one=False``), everything else N(0, std^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "A_log" in name or "A_b_log" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 0.5)
            else:
                centre = 1.0 if norm_weights_around_one and "norm" in name and "weight" in name else 0
                p.copy_(torch.randn(p.shape, generator=g) * std + centre)
    return model


def build(case: Case, seed: int = 0):
    torch.manual_seed(seed)
    model = case.model_class(case.make_config()).eval()
    inputs = case.make_inputs(torch.Generator().manual_seed(seed + 1))
    return model, inputs
