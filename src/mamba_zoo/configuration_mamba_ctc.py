# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Configuration of MambaForCTC: a ConMamba-style bidirectional Mamba encoder with a CTC head."""

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from .configuration_mamba_common import NORM_TYPES, MambaMixerConfigMixin


@strict(accept_kwargs=True)
class MambaCTCConfig(MambaMixerConfigMixin, PretrainedConfig):
    r"""
    Configuration of [`MambaCTCModel`] / [`MambaForCTC`]: log-mel fbank frames -> convolutional subsampling (stride 2
    per layer) -> bidirectional Mamba encoder (Vim "v2" mixer) -> `lm_head` -> CTC (Wav2Vec2ForCTC conventions).

    Args:
        vocab_size (`int`, defaults to 32): characters of the CTC tokenizer, blank (`pad_token_id`) included.
        num_mel_bins (`int`, defaults to 80): mel bins of the input features.
        feature_hop_length (`int`, defaults to 160): samples per feature frame (10 ms at 16 kHz); with the
            subsampling it gives `inputs_to_logits_ratio`, which the ASR pipeline uses to chunk long audio.
        num_subsampling_layers (`int`, defaults to 2): Conv2d(kernel 3, stride 2, padding 1) + activation blocks;
            `2 ** num_subsampling_layers` is the time subsampling (4x by default).
        subsampling_conv_channels (`int`, defaults to 64): channels of the subsampling convolutions.
        hidden_size (`int`, defaults to 144): model width `d_model`.
        num_hidden_layers (`int`, defaults to 6): encoder blocks.
        block_type (`str`, defaults to `"mamba"`): `"mamba"` = mamba-ssm's Add -> Norm -> Mixer residual block;
            `"conmamba"` = ConMamba block (half-step macaron FFN, bidirectional Mamba, conv module, half-step FFN,
            LayerNorm).
        mixer_type (`str`, defaults to `"mamba"`): `"mamba"` (Mamba-1 selective scan) or `"mamba2"` (SSD), both
            bidirectional.
        state_size (`int`, defaults to 16): SSM state size `d_state`.
        expand (`int`, defaults to 2): inner width factor of the mixer.
        conv_kernel (`int`, defaults to 4): the mixer's causal depthwise conv width `d_conv`.
        time_step_rank (`int` or `"auto"`): rank of the time step projection (`ceil(hidden_size / 16)` for auto).
        time_step_min / time_step_max (`float`): range of the initial time steps.
        mamba2_head_dim, mamba2_n_groups, mamba2_chunk_size (`int`): Mamba-2 mixer shape (`mixer_type="mamba2"`);
            its gated norm keeps the mixer's own eps (1e-5), not `layer_norm_eps`.
        divide_out (`bool`, defaults to `True`): halve the sum of the two directions.
        use_bias (`bool`): biases in the mixer's `in_proj`/`out_proj`.
        intermediate_size (`int`, defaults to 576): FFN width of ConMamba blocks.
        conv_module_kernel_size (`int`, defaults to 31): depthwise kernel of the ConMamba conv module (odd).
        hidden_act (`str`, defaults to `"silu"`): activation of the subsampling, FFN and conv module.
        norm_type (`str`, defaults to `"layernorm"`): `"layernorm"` or `"rmsnorm"` in the Mamba blocks.
        layer_norm_eps (`float`): epsilon of every norm (but the Mamba-2 mixer's gated norm).
        residual_in_fp32 (`bool`): keep the residual stream in float32 (Mamba blocks).
        hidden_dropout (`float`): dropout after the subsampling projection and inside ConMamba modules.
        final_dropout (`float`): dropout before `lm_head`.
        drop_path_rate (`float`): stochastic depth, linearly increasing over the blocks up to this value.
        apply_spec_augment (`bool`), mask_time_prob, mask_time_length, mask_time_min_masks, mask_feature_prob,
            mask_feature_length, mask_feature_min_masks: SpecAugment on the input fbank while training
            (transformers' `_compute_mask_indices`, as Wav2Vec2); masked values are set to 0 (the normalised mean).
        ctc_loss_reduction (`str`, defaults to `"mean"`): `"mean"`, `"sum"` or `"none"` (as `torch.nn.CTCLoss`).
        ctc_zero_infinity (`bool`, defaults to `False`, as Wav2Vec2): zero the infinite loss (and its gradient) of
            samples too short for their labels. Off, such a sample gives `inf`, so a bad batch is seen, not hidden;
            recipes that keep a few too-short utterances set it to `True`.
        initializer_range (`float`): std of the normal init of linear layers.
        kernel_backend (`str`, defaults to `"auto"`): scan backend of the mixers (`auto`, `cuda`, `cpu`,
            `reference`).
        pad_token_id (`int`, defaults to 0): the CTC blank (the tokenizer's `<pad>`).

    Example:

    ```python
    >>> from mamba_zoo import MambaCTCConfig, MambaForCTC
    >>> model = MambaForCTC(MambaCTCConfig(vocab_size=32, hidden_size=144, num_hidden_layers=6))
    >>> model.config.inputs_to_logits_ratio
    640
    ```
    """

    model_type = "mamba_ctc"

    # fields repeat across the configs on purpose: each @strict dataclass declares its own (shared logic: the mixin)
    vocab_size: int = 32
    num_mel_bins: int = 80
    feature_hop_length: int = 160
    num_subsampling_layers: int = 2
    subsampling_conv_channels: int = 64
    hidden_size: int = 144
    num_hidden_layers: int = 6
    block_type: str = "mamba"
    mixer_type: str = "mamba"
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: int | str = "auto"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    mamba2_head_dim: int = 32
    mamba2_n_groups: int = 1
    mamba2_chunk_size: int = 64
    divide_out: bool = True
    use_bias: bool = False
    intermediate_size: int = 576
    conv_module_kernel_size: int = 31
    hidden_act: str = "silu"
    norm_type: str = "layernorm"
    layer_norm_eps: float = 1e-5
    residual_in_fp32: bool = False
    hidden_dropout: float | int = 0.1
    final_dropout: float | int = 0.1
    drop_path_rate: float | int = 0.0
    apply_spec_augment: bool = True
    mask_time_prob: float | int = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float | int = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    ctc_loss_reduction: str = "mean"
    ctc_zero_infinity: bool = False
    initializer_range: float = 0.02
    kernel_backend: str = "auto"
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    use_cache: bool = False
    tie_word_embeddings: bool = False

    # the Mamba-2 mixers' gated norm has always used Mamba2Mixer's default eps, not layer_norm_eps
    mixer_args_at_default = ("norm_eps",)
    checkpoint_pipeline = ("automatic-speech-recognition", "pipeline_mamba_asr.MambaASRPipeline", "AutoModelForCTC",
                           "multimodal")

    def __post_init__(self, **kwargs):
        self.add_checkpoint_pipeline(kwargs)  # the pipeline's module travels with the feature extractor
        super().__post_init__(**kwargs)
        self.resolve_and_validate()

    def validate_architecture(self):
        """Part of `@strict` validation: MambaCTC's own fields (`validate_mixer_fields` checks the mixer's)."""
        self._require_positive_ints(("vocab_size", "num_mel_bins", "feature_hop_length", "num_subsampling_layers",
                                     "subsampling_conv_channels", "intermediate_size", "conv_module_kernel_size"))
        self._require_choice("block_type", ("mamba", "conmamba"))
        self._require_choice("norm_type", NORM_TYPES)
        self._require(self.conv_module_kernel_size % 2, "conv_module_kernel_size", "must be odd (symmetric padding)")
        self._require_choice("ctc_loss_reduction", ("mean", "sum", "none"))
        self._require_probabilities(
            ("hidden_dropout", "final_dropout", "drop_path_rate", "mask_time_prob", "mask_feature_prob")
        )
        if self.pad_token_id is None or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"pad_token_id is the CTC blank and must be in [0, vocab_size={self.vocab_size}), got {self.pad_token_id}."
            )

    @property
    def subsampling_factor(self) -> int:
        """Feature frames per encoder frame."""
        return 2**self.num_subsampling_layers

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Audio samples per logit frame (`feature_hop_length * subsampling_factor`, 640 by default): the ASR
        pipeline aligns its chunks and strides to it and converts logit frames to timestamps with it."""
        return self.feature_hop_length * self.subsampling_factor


__all__ = ["MambaCTCConfig"]
