# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""SSAMBA model configuration (Self-Supervised Audio Mamba, Shams et al. 2024)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .configuration_mamba_common import NORM_TYPES, MambaMixerConfigMixin

# Named sizes of the released checkpoints (timm-style presets): every size is 24 layers deep.
SSAMBA_PRESETS: dict[str, dict] = {
    "tiny": {"hidden_size": 192, "num_hidden_layers": 24},
    "small": {"hidden_size": 384, "num_hidden_layers": 24},
    "base": {"hidden_size": 768, "num_hidden_layers": 24},
}

_POOLINGS = ("mean", "cls")


def patch_shape(patch_size) -> tuple[int, int]:
    """`(frequency, time)` extent of a patch: `patch_size` is an int (square, AST) or a `[frequency, time]` pair."""
    if isinstance(patch_size, int):
        return patch_size, patch_size
    frequency, time = patch_size
    return int(frequency), int(time)


def patch_grid(num_mel_bins: int, max_length: int, patch_size, frequency_stride: int, time_stride: int):
    """Number of patches `(frequency, time)` that a `patch_size` Conv2d (an int for square patches or a
    `[frequency, time]` pair) with the given strides cuts from a `(num_mel_bins, max_length)` spectrogram."""
    frequency, time = patch_shape(patch_size)
    return (num_mel_bins - frequency) // frequency_stride + 1, (max_length - time) // time_stride + 1


@strict
class SSAMBAConfig(MambaMixerConfigMixin, PreTrainedConfig):
    r"""
    Configuration of an SSAMBA model: an audio spectrogram cut into (possibly overlapping) 16x16 patches, a cls token at
    position 0, learned absolute position embeddings and a stack of bidirectional Mamba blocks (Vim "v2" mixers), as in
    SSAMBA's released checkpoints. Field names follow transformers' `ASTConfig` where they mean the same thing.

    Args:
        hidden_size (`int`, defaults to 192): width D of the model (tiny 192, small 384, base 768).
        num_hidden_layers (`int`, defaults to 24): number of Mamba blocks (24 for every released size).
        state_size (`int`, defaults to 16): SSM state size N.
        expand (`int`, defaults to 2): inner width of the mixer is `expand * hidden_size`.
        conv_kernel (`int`, defaults to 4): width of the depthwise causal convolution.
        time_step_rank (`int` or `"auto"`, defaults to `"auto"`): rank of the time-step projection, `ceil(D / 16)`.
        time_step_min / time_step_max (`float`, defaults to 0.001 / 0.1): range of the initial time steps;
            time_step_floor (`float`, defaults to 1e-4): their lower clamp.
        use_bias (`bool`, defaults to False): bias in `in_proj`/`out_proj`.
        use_conv_bias (`bool`, defaults to True): bias in the depthwise convolution.
        bidirectional_mixer (`bool`, defaults to True): each mixer also scans the reversed sequence (bimamba "v2").
        divide_out (`bool`, defaults to True): halve the sum of the two mixer branches (`if_devide_out`).
        bidirectional_layer_pairing (`bool`, defaults to True): Vim's `if_bidirectional`: layer `2i` reads the sequence,
            layer `2i+1` the reversed sequence, and their hidden states and residuals are summed after flipping back.
            Needs an even `num_hidden_layers`.
        norm_type (`str`, defaults to `"layernorm"`): `"layernorm"` (with bias, as released) or `"rmsnorm"`.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the block and final norms.
        residual_in_fp32 (`bool`, defaults to False): keep the residual stream in float32.
        double_final_norm (`bool`, defaults to True): apply the final `norm_f` twice, as the released SSAMBA code does.
        drop_path_rate (`float`, defaults to 0.1): stochastic depth; block `i` uses `[0] + linspace(0, rate, L)`,
            the final residual add uses `rate`.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout after adding position embeddings.
        use_cls_token (`bool`, defaults to True): prepend a learned cls token at position 0.
        use_position_embeddings (`bool`, defaults to True): add learned absolute position embeddings laid out on the
            `max_length` patch grid (SSAST/SSAMBA). `False`: none (the recurrence and the convolutions give the
            order), so a model trained on short clips reads recordings of any length without interpolating them
            (long-audio frame classification).
        pooling (`str`, defaults to `"mean"`): clip representation: `"mean"` of the non-cls tokens or the `"cls"` token.
        patch_size (`int` or `list[int]`, defaults to 16): patch size: an int for square patches (AST, SSAMBA's
            released checkpoints), or a `[frequency, time]` pair (SSAST's `fshape`/`tshape`), e.g. `[128, 2]` for
            frame-based tokens that each span every mel bin of a few frames (SSAST-Frame, the better choice for speech).
        frequency_stride (`int`, defaults to 16): patch stride along frequency (16 in pretraining, 10 fine-tuning).
        time_stride (`int`, defaults to 16): patch stride along time.
        num_mel_bins (`int`, defaults to 128): frequency dimension of the input spectrogram (SSAST's `input_fdim`).
        max_length (`int`, defaults to 1024): time frames of the spectrogram the position embeddings are laid out for
            (SSAST's `input_tdim`). Other lengths work with `interpolate_pos_encoding=True`.
        classifier_layer_norm_eps (`float`, defaults to 1e-5): epsilon of the head's LayerNorm.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal for embeddings and linear weights.
        mask_patch_count (`int`, defaults to 400): pretraining: patches masked per clip (400 of 512 in the released
            `*_400` checkpoints).
        mask_cluster_factor (`int`, defaults to 3): pretraining: cluster masks are squares of side
            `uniform{3, ..., 3 + factor - 1}` patches (SSAST's cluster masking); 0 masks patches one by one at random.
        discriminative_loss_weight (`float`, defaults to 1.0): weight of the InfoNCE (masked patch classification) loss.
        generative_loss_weight (`float`, defaults to 10.0): weight of the MSE (masked patch reconstruction) loss.
        kernel_backend (`str`, defaults to `"auto"`): selective-scan backend (`"auto"`, `"cuda"`, `"cpu"`,
            `"reference"`).

    Example:

    ```python
    >>> from mamba_zoo import SSAMBAConfig, SSAMBAForAudioClassification
    >>> config = SSAMBAConfig.from_preset("tiny", max_length=128, frequency_stride=10, time_stride=10, num_labels=12)
    >>> model = SSAMBAForAudioClassification(config)
    ```
    """

    model_type = "ssamba"

    # fields repeat across the configs on purpose: each @strict dataclass declares its own (shared logic: the mixin)
    hidden_size: int = 192
    num_hidden_layers: int = 24
    state_size: int = 16
    expand: int = 2
    conv_kernel: int = 4
    time_step_rank: int | str = "auto"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    use_bias: bool = False
    use_conv_bias: bool = True
    bidirectional_mixer: bool = True
    divide_out: bool = True
    bidirectional_layer_pairing: bool = True
    norm_type: str = "layernorm"
    layer_norm_eps: float = 1e-5
    residual_in_fp32: bool = False
    double_final_norm: bool = True
    drop_path_rate: float = 0.1
    hidden_dropout_prob: float = 0.0
    use_cls_token: bool = True
    use_position_embeddings: bool = True
    pooling: str = "mean"
    patch_size: int | list[int] = 16
    frequency_stride: int = 16
    time_stride: int = 16
    num_mel_bins: int = 128
    max_length: int = 1024
    classifier_layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    mask_patch_count: int = 400
    mask_cluster_factor: int = 3
    discriminative_loss_weight: float = 1.0
    generative_loss_weight: float = 10.0
    kernel_backend: str = "auto"

    checkpoint_pipeline = ("audio-classification", "feature_extraction_ssamba.SoundfileAudioClassificationPipeline",
                           "AutoModelForAudioClassification", "audio")

    def __post_init__(self, **kwargs):
        if isinstance(self.patch_size, tuple):
            self.patch_size = list(self.patch_size)
        if isinstance(self.patch_size, list) and len(self.patch_size) == 2 and self.patch_size[0] == self.patch_size[1]:
            self.patch_size = int(self.patch_size[0])
        self.add_checkpoint_pipeline(kwargs)  # the pipeline's module travels with the feature extractor
        super().__post_init__(**kwargs)
        self.resolve_and_validate()

    @classmethod
    def from_preset(cls, size: str, **kwargs) -> "SSAMBAConfig":
        """A config for a released size (`"tiny"`, `"small"` or `"base"`), with `kwargs` overriding any field."""
        if size not in SSAMBA_PRESETS:
            raise ValueError(f"Unknown SSAMBA size {size!r}; choose one of {sorted(SSAMBA_PRESETS)}.")
        return cls(**{**SSAMBA_PRESETS[size], **kwargs})

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along `(frequency, time)` for a `(num_mel_bins, max_length)` spectrogram."""
        return patch_grid(self.num_mel_bins, self.max_length, self.patch_size, self.frequency_stride, self.time_stride)

    @property
    def frequency_patch_size(self) -> int:
        """Mel bins covered by one patch."""
        return patch_shape(self.patch_size)[0]

    @property
    def time_patch_size(self) -> int:
        """Frames covered by one patch."""
        return patch_shape(self.patch_size)[1]

    @property
    def num_patches(self) -> int:
        frequency, time = self.grid_size
        return frequency * time

    @property
    def intermediate_size(self) -> int:
        return self.expand * self.hidden_size

    def validate_architecture(self) -> None:
        """Part of `@strict` validation: SSAMBA's own fields (`validate_mixer_fields` checks the mixer's)."""
        self._require_positive_ints(
            ("frequency_stride", "time_stride", "num_mel_bins", "max_length", "mask_patch_count")
        )
        patch = self.patch_size
        is_pair = isinstance(patch, list) and len(patch) == 2 and all(isinstance(v, int) for v in patch)
        if not (isinstance(patch, int) or is_pair) or min(patch_shape(patch)) <= 0:
            raise ValueError(
                f"SSAMBAConfig.patch_size must be a positive integer (square patches) or a [frequency, time] pair of "
                f"positive integers, got {patch!r}."
            )
        if self.num_mel_bins < self.frequency_patch_size:
            raise ValueError(
                f"num_mel_bins ({self.num_mel_bins}, the spectrogram's frequency dimension) is smaller than patch_size "
                f"({self.patch_size}) along frequency: no patch fits. Use more mel bins or a smaller patch_size."
            )
        if self.max_length < self.time_patch_size:
            raise ValueError(
                f"max_length ({self.max_length} frames, the spectrogram's time dimension) is smaller than patch_size "
                f"({self.patch_size}) along time: no patch fits. Use max_length >= the patch's time size."
            )
        if self.bidirectional_layer_pairing and self.num_hidden_layers % 2 != 0:
            raise ValueError(
                f"bidirectional_layer_pairing pairs layers (2i reads the sequence, 2i+1 its reversal), so "
                f"num_hidden_layers must be even, got {self.num_hidden_layers}. Use an even depth or set "
                "bidirectional_layer_pairing=False."
            )
        self._require_choice("pooling", _POOLINGS)
        if self.pooling == "cls" and not self.use_cls_token:
            raise ValueError("pooling='cls' needs use_cls_token=True.")
        self._require_choice("norm_type", NORM_TYPES)
        self._require_probabilities(("drop_path_rate", "hidden_dropout_prob"))
        self._require(self.mask_cluster_factor >= 0, "mask_cluster_factor", "must be >= 0 (0 = random patches)")
        if self.discriminative_loss_weight < 0 or self.generative_loss_weight < 0:
            raise ValueError("discriminative_loss_weight and generative_loss_weight must be >= 0.")


__all__ = ["SSAMBAConfig", "SSAMBA_PRESETS", "patch_grid", "patch_shape"]
