# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Convert SSAMBA's released checkpoints (`ssamba_{tiny,small,base}_{250,300,400}.pth`) to mamba-zoo's format.

    python -m mamba_zoo.convert_ssamba_original_to_hf --checkpoint ssamba_tiny_400.pth --output ssamba-tiny-400

The released files are `torch.nn.DataParallel` state dicts of SSAMBA's pretraining model (`module.v.*` = the Vision
Mamba encoder, `module.cpredlayer.*` / `module.gpredlayer.*` = the SSAST heads, `module.mask_embed`,
`module.p_input_fdim` / `module.p_input_tdim` = the pretraining spectrogram size). Sizes are inferred from tensor
shapes; the settings the released models ran with but that leave no trace in the weights (bidirectional layer
pairing, divide_out, the double final norm, drop path 0.1) are the `SSAMBAConfig` defaults. A fine-tuned checkpoint
(`module.mlp_head.*`) converts to `SSAMBAForAudioClassification`; pass its patch strides and input length.

The file is read with `torch.load(..., weights_only=True)` and loaded strictly: every key is either mapped or listed as
unused (the Vim ImageNet `head`, which SSAMBA never trains), and any missing or unexpected key is an error.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Optional

import torch

from .configuration_ssamba import SSAMBAConfig, patch_grid
from .feature_extraction_ssamba import SSAMBA_FEATURE_PRESETS, SSAMBAFeatureExtractor
from .modeling_ssamba import SSAMBAForAudioClassification, SSAMBAForPreTraining

# original prefix -> ours (applied in order, first match wins)
_KEY_MAP = [
    ("v.patch_embed.proj.", "ssamba.embeddings.patch_embeddings.projection."),
    ("v.cls_token", "ssamba.embeddings.cls_token"),
    ("v.pos_embed", "ssamba.embeddings.position_embeddings"),
    ("mask_embed", "ssamba.embeddings.mask_token"),
    ("v.layers.", "ssamba.layers."),
    ("v.norm_f.", "ssamba.norm_f."),
    ("cpredlayer.", "discriminative_head."),
    ("gpredlayer.", "generative_head."),
    ("mlp_head.0.", "classifier.layernorm."),
    ("mlp_head.1.", "classifier.dense."),
]
# keys that carry no weights we use: Vim's ImageNet classifier (never trained by SSAMBA), the pretraining input size
_UNUSED_PREFIXES = ("v.head.", "p_input_fdim", "p_input_tdim")


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an original `.pth` safely (`weights_only=True`) and strip the `module.` (DataParallel) prefix."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} does not hold a state dict.")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def infer_config(state: dict[str, torch.Tensor], **overrides) -> SSAMBAConfig:
    """Sizes from tensor shapes: width, depth, SSM sizes, patch size, pretraining spectrogram size, norm type."""
    required = ("v.pos_embed", "v.patch_embed.proj.weight", "v.layers.0.mixer.in_proj.weight", "v.norm_f.weight")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"Not an SSAMBA checkpoint: missing {missing}.")
    hidden_size = state["v.pos_embed"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"v\.layers\.(\d+)\.", k)))
    in_proj = state["v.layers.0.mixer.in_proj.weight"]
    a_log = state["v.layers.0.mixer.A_log"]
    patch = state["v.patch_embed.proj.weight"]
    config = dict(
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        state_size=a_log.shape[1],
        expand=in_proj.shape[0] // (2 * hidden_size),
        conv_kernel=state["v.layers.0.mixer.conv1d.weight"].shape[-1],
        time_step_rank=state["v.layers.0.mixer.dt_proj.weight"].shape[1],
        use_bias="v.layers.0.mixer.in_proj.bias" in state,
        use_conv_bias="v.layers.0.mixer.conv1d.bias" in state,
        bidirectional_mixer="v.layers.0.mixer.A_b_log" in state,
        norm_type="layernorm" if "v.norm_f.bias" in state else "rmsnorm",
        patch_size=int(patch.shape[-1]) if patch.shape[-1] == patch.shape[-2] else [int(v) for v in patch.shape[-2:]],
        frequency_stride=patch.shape[-2],
        time_stride=patch.shape[-1],
        use_cls_token="v.cls_token" in state,
    )
    if "p_input_fdim" in state:
        config["num_mel_bins"] = int(state["p_input_fdim"].item())
        config["max_length"] = int(state["p_input_tdim"].item())
    if "mlp_head.1.weight" in state:
        config["num_labels"] = state["mlp_head.1.weight"].shape[0]
    config.update({k: v for k, v in overrides.items() if v is not None})
    config = SSAMBAConfig(**config)
    prefix = 1 if config.use_cls_token else 0
    if state["v.pos_embed"].shape[1] != config.num_patches + prefix:
        raise ValueError(
            f"pos_embed has {state['v.pos_embed'].shape[1] - prefix} patch positions but num_mel_bins="
            f"{config.num_mel_bins}, max_length={config.max_length}, strides=({config.frequency_stride}, "
            f"{config.time_stride}) give {config.num_patches}. Pass the checkpoint's --num-mel-bins, --max-length, "
            "--frequency-stride and --time-stride."
        )
    return config


def convert_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map original keys to ours; returns (converted, unused original keys)."""
    converted, unused = {}, []
    for key, value in state.items():
        if key.startswith(_UNUSED_PREFIXES):
            unused.append(key)
            continue
        for old, new in _KEY_MAP:
            if key.startswith(old):
                converted[new + key[len(old):]] = value
                break
        else:
            converted[key] = value  # reported as unexpected by the strict load
    return converted, unused


def convert_checkpoint(
    checkpoint: str | Path,
    output: Optional[str | Path] = None,
    mask_patch_count: Optional[int] = None,
    feature_preset: Optional[str] = None,
    **config_overrides,
):
    """Convert one checkpoint; returns the model (`SSAMBAForPreTraining` or `SSAMBAForAudioClassification`) and saves
    it (+ a feature extractor) to `output` when given."""
    state = load_original_state_dict(checkpoint)
    if mask_patch_count is None and (m := re.search(r"_(\d+)\.pth?$", str(checkpoint))):
        mask_patch_count = int(m.group(1))
    is_classifier = "mlp_head.1.weight" in state
    config = infer_config(state, mask_patch_count=None if is_classifier else mask_patch_count, **config_overrides)
    model_class = SSAMBAForAudioClassification if is_classifier else SSAMBAForPreTraining
    model = model_class(config)
    converted, unused = convert_state_dict(state)
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"Checkpoint does not match {model_class.__name__}:\n  missing keys: {result.missing_keys}\n"
            f"  unexpected keys: {result.unexpected_keys}"
        )
    print(f"Loaded {len(converted)} tensors into {model_class.__name__} ({sum(p.numel() for p in model.parameters()):,} "
          f"parameters); unused original keys: {unused}")
    model.eval()
    if output is not None:
        model.save_pretrained(output)
        if feature_preset is None:
            feature_preset = next(
                (name for name, p in SSAMBA_FEATURE_PRESETS.items() if p["max_length"] == config.max_length), "audioset"
            )
        SSAMBAFeatureExtractor.from_preset(
            feature_preset, num_mel_bins=config.num_mel_bins, max_length=config.max_length
        ).save_pretrained(output)
        print(f"Saved to {output}")
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original .pth (e.g. ssamba_tiny_400.pth)")
    parser.add_argument("--output", required=True, help="output directory (save_pretrained format)")
    parser.add_argument("--mask-patch-count", type=int, default=None,
                        help="masked patches in pretraining (default: the number in the file name, e.g. _400)")
    parser.add_argument("--feature-preset", choices=sorted(SSAMBA_FEATURE_PRESETS), default=None,
                        help="normalisation of the saved feature extractor (default: by input length)")
    parser.add_argument("--frequency-stride", type=int, default=None, help="fine-tuned checkpoints: patch stride")
    parser.add_argument("--time-stride", type=int, default=None, help="fine-tuned checkpoints: patch stride")
    parser.add_argument("--max-length", type=int, default=None, help="fine-tuned checkpoints: input frames")
    parser.add_argument("--num-mel-bins", type=int, default=None, help="fine-tuned checkpoints: mel bins")
    args = parser.parse_args(argv)
    convert_checkpoint(
        args.checkpoint, args.output, mask_patch_count=args.mask_patch_count, feature_preset=args.feature_preset,
        frequency_stride=args.frequency_stride, time_stride=args.time_stride, max_length=args.max_length,
        num_mel_bins=args.num_mel_bins,
    )


if __name__ == "__main__":
    main()
