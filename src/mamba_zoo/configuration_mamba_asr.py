# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Configuration of MambaDecoderOnlyASR (MADEON, Masuyama et al., SLT 2024, arXiv 2411.06968)."""

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from .configuration_mamba_common import NORM_TYPES, MambaMixerConfigMixin


@strict(accept_kwargs=True)
class MambaASRConfig(MambaMixerConfigMixin, PretrainedConfig):
    r"""
    Configuration of [`MambaASRModel`] / [`MambaDecoderOnlyASR`]: one Mamba (or Mamba-2) stack reads
    `<sos> <speech> o_1 .. o_Ls <generatetext> w_1 .. w_Lt <eos>` and is trained on the text tokens only.

    The speech prefix `o_1 .. o_Ls` is either discrete speech units in the joint vocabulary (`speech_input="units"`,
    MADEON exactly) or log-mel frames through a small convolutional subsampler (`speech_input="features"`).

    Speech prefixing (SP) makes the prefix `<sos> <speech> o_1 .. o_Ls` bidirectional while the text stays causal:
    - `"parallel"`: every mixer gets a second branch (its own conv/SSM parameters) that reads the prefix reversed
      position by position and then the text in order; the two branch outputs are summed (Vim "v2" mixer with
      `reverse_lengths` = prefix length).
    - `"serial"`: every second block (1, 3, 5, ...) reads its input with the prefix reversed and writes its output back
      in the original order.
    - `"none"`: a plain causal decoder-only model.
    Reversal is per sample, inside that sample's prefix, never across padding.

    Args:
        vocab_size (`int`, defaults to 64): joint vocabulary (special tokens, characters and, for units, speech units).
        speech_input (`str`, defaults to `"features"`): `"units"` (discrete units, ids inside the vocabulary) or
            `"features"` (log-mel frames `(batch, frames, num_mel_bins)` through the subsampler).
        unit_token_offset (`int`, defaults to 0): id of the first speech unit `<unit_0>` (units only).
        num_units (`int`, defaults to 0): number of speech units (units only; ids
            `[unit_token_offset, unit_token_offset + num_units)`).
        num_mel_bins (`int`, defaults to 80): mel bins of the input features (features only).
        num_subsampling_layers (`int`, defaults to 2): Conv2d(kernel 3, stride 2, no padding) + SiLU blocks; time
            subsampling `2 ** num_subsampling_layers`. No padding, so a frame never sees another sample's padding.
        subsampling_conv_channels (`int`, defaults to 32).
        hidden_size (`int`, defaults to 384): `d_model` (paper: 384).
        num_hidden_layers (`int`, defaults to 16): Mamba blocks (paper: 16).
        mixer_type (`str`, defaults to `"mamba"`): `"mamba"` or `"mamba2"`.
        speech_prefix (`str`, defaults to `"parallel"`): `"none"`, `"parallel"` or `"serial"` (see above).
        state_size (`int`, defaults to 16): SSM state size `d_state`.
        expand (`int`, defaults to 4): mixer inner width factor (paper: 4).
        conv_kernel (`int`, defaults to 4): the mixer's causal conv width `d_conv`.
        time_step_rank (`int` or `"auto"`): rank of the time step projection (`ceil(hidden_size / 16)`).
        time_step_min / time_step_max (`float`): range of the initial time steps.
        mamba2_head_dim, mamba2_n_groups, mamba2_chunk_size (`int`): Mamba-2 mixer shape.
        use_bias (`bool`): biases in the mixer's `in_proj`/`out_proj` (must stay `False`: a bias-free `in_proj`
            keeps padded positions exactly zero).
        norm_type (`str`, defaults to `"rmsnorm"`), layer_norm_eps (`float`), residual_in_fp32 (`bool`).
        drop_path_rate (`float`): stochastic depth, linearly increasing over the blocks.
        speech_mask_prob (`float`, defaults to 0.0): input-embedding masking (training only): the probability that a
            speech position starts a masked span; masked speech embeddings are set to zero.
        speech_mask_length (`int`, defaults to 5): length of each masked span.
        ctc_loss_weight (`float`, defaults to 0.0): joint CTC/decoder training (as in ESPnet, where MADEON was built):
            a CTC head over the final speech-prefix states spells the transcript, and the loss is
            `(1 - ctc_loss_weight) * cross-entropy + ctc_loss_weight * CTC`. It makes the prefix states carry the
            transcript, so the decoder has something to read. 0 = no CTC head.
        ctc_upsample (`int`, defaults to 2): CTC frames per speech-prefix state (the head predicts this many at once),
            so that states 40-80 ms apart can spell characters. CTC blank = `pad_token_id`.
        ctc_decoding_weight (`float`, defaults to 0.0): joint CTC/attention decoding in `generate()` (and so in the
            pipeline): hypotheses are scored `(1 - w) * log p_decoder + w * log p_ctc(prefix)` with CTC prefix scores
            from the CTC head (`ctc_prefix_scoring`). Needs `ctc_loss_weight > 0`; `generate(ctc_weight=...)`
            overrides it per call.
        initializer_range (`float`): std of the normal init of linear and embedding layers.
        kernel_backend (`str`, defaults to `"auto"`): scan backend (`auto`, `cuda`, `cpu`, `reference`).
        pad_token_id / bos_token_id (`<sos>`) / eos_token_id / speech_token_id (`<speech>`) /
            generate_text_token_id (`<generatetext>`): special token ids.

    Example:

    ```python
    >>> from mamba_zoo import MambaASRConfig, MambaDecoderOnlyASR
    >>> config = MambaASRConfig(vocab_size=48, hidden_size=64, num_hidden_layers=2, speech_input="features")
    >>> model = MambaDecoderOnlyASR(config)
    ```
    """

    model_type = "mamba_asr"

    # fields repeat across the configs on purpose: each @strict dataclass declares its own (shared logic: the mixin)
    vocab_size: int = 64
    speech_input: str = "features"
    unit_token_offset: int = 0
    num_units: int = 0
    num_mel_bins: int = 80
    num_subsampling_layers: int = 2
    subsampling_conv_channels: int = 32
    hidden_size: int = 384
    num_hidden_layers: int = 16
    mixer_type: str = "mamba"
    speech_prefix: str = "parallel"
    state_size: int = 16
    expand: int = 4
    conv_kernel: int = 4
    time_step_rank: int | str = "auto"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    mamba2_head_dim: int = 32
    mamba2_n_groups: int = 1
    mamba2_chunk_size: int = 64
    use_bias: bool = False
    norm_type: str = "rmsnorm"
    layer_norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    drop_path_rate: float | int = 0.0
    speech_mask_prob: float | int = 0.0
    speech_mask_length: int = 5
    ctc_loss_weight: float | int = 0.0
    ctc_upsample: int = 2
    ctc_decoding_weight: float | int = 0.0
    initializer_range: float = 0.02
    kernel_backend: str = "auto"
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    speech_token_id: int = 4
    generate_text_token_id: int = 5
    use_cache: bool = True
    tie_word_embeddings: bool = True

    checkpoint_pipeline = ("automatic-speech-recognition", "pipeline_mamba_asr.MambaASRPipeline",
                           "AutoModelForSpeechSeq2Seq", "multimodal")

    def __post_init__(self, **kwargs):
        self.add_checkpoint_pipeline(kwargs)  # the model's save_pretrained copies the pipeline's module
        super().__post_init__(**kwargs)
        self.resolve_and_validate()

    def validate_architecture(self):
        """Part of `@strict` validation: MADEON's own fields (`validate_mixer_fields` checks the mixer's)."""
        self._require_positive_ints(
            ("vocab_size", "num_mel_bins", "num_subsampling_layers", "subsampling_conv_channels", "speech_mask_length",
             "ctc_upsample")
        )
        self._require_choice("speech_input", ("units", "features"))
        self._require_choice("speech_prefix", ("none", "parallel", "serial"))
        self._require(not self.use_bias, "use_bias", "must be False", "A bias in in_proj leaks into padded positions.")
        self._require_choice("norm_type", NORM_TYPES)
        self._require_probabilities(("drop_path_rate", "speech_mask_prob", "ctc_loss_weight", "ctc_decoding_weight"))
        self._require(self.ctc_decoding_weight == 0 or self.ctc_loss_weight > 0, "ctc_decoding_weight",
                      "must be 0 without a CTC head", "Set ctc_loss_weight > 0 (and train the head) to decode with it.")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "speech_token_id", "generate_text_token_id"):
            value = getattr(self, name)
            self._require(isinstance(value, int) and 0 <= value < self.vocab_size, name,
                          f"must be an id in [0, vocab_size={self.vocab_size})")
        if self.speech_input == "units":
            if self.num_units <= 0:
                raise ValueError("speech_input='units' needs num_units > 0 (the size of the unit tokenizer).")
            if self.unit_token_offset < 0 or self.unit_token_offset + self.num_units > self.vocab_size:
                raise ValueError(
                    f"speech units [{self.unit_token_offset}, {self.unit_token_offset + self.num_units}) must lie "
                    f"inside the vocabulary (vocab_size={self.vocab_size})."
                )

    @property
    def speech_subsampling(self) -> int:
        """Time subsampling of the feature frontend (1 for units)."""
        return 2 ** self.num_subsampling_layers if self.speech_input == "features" else 1


__all__ = ["MambaASRConfig"]
