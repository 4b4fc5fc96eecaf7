# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Convert a released BlackMamba checkpoint (github Zyphra/BlackMamba, huggingface.co/Zyphra/BlackMamba-*) to a
transformers checkpoint of `BlackMambaForCausalLM`.

    python -m mamba_zoo.convert_blackmamba_original_to_hf --checkpoint pytorch_model.bin --config config.json \
        --output DIR [--tokenizer tokenizer.json] [--dtype float32|bfloat16|float16]

The released `pytorch_model.bin` holds `{"model": state_dict}` (loaded here with `weights_only=True`) with Megatron-style
names; `config.json` has the fields `num_layers, hidden_size, state_size, conv_dimension, vocab_size, expansion_factor,
mamba_moe_layers, ffn_hidden_size` (+ `add_bias_linear`, `swiglu`). `mamba_moe_layers` gives one code per layer:
`"r"` = Mamba layer, `"1"` = dense MLP, `"<E>"` = top-1 MoE with E experts. Sizes are read from the config and checked
against the tensor shapes; the state dict is loaded strictly and any missing or unused key is an error.

Key renames: `embedding.word_embeddings` -> `backbone.embeddings`, `decoder.layers.{i}.*` -> `backbone.layers.{i}.*`
(norm, mixer.{in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj} or mixer.{router, local_experts.{e}.linear_fc1/2}),
`decoder.final_layernorm` -> `backbone.norm_f`; `output_layer.weight` (if present) is the tied embedding and dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Optional

import torch

from .configuration_blackmamba import BlackMambaConfig
from .modeling_blackmamba import BlackMambaForCausalLM


_RENAMES = (
    (re.compile(r"^embedding\.word_embeddings\."), "backbone.embeddings."),
    (re.compile(r"^decoder\.layers\."), "backbone.layers."),
    (re.compile(r"^decoder\.final_layernorm\."), "backbone.norm_f."),
)


def _layer_codes(json_config: dict) -> list[str]:
    codes = json_config.get("mamba_moe_layers") or []
    if isinstance(codes, str):
        codes = [c for c in re.split(r"[\s,]+", codes.strip()) if c]
    num_layers = int(json_config["num_layers"])
    if not codes:
        return ["r"] * num_layers
    if len(codes) != num_layers:
        raise ValueError(f"mamba_moe_layers has {len(codes)} entries but num_layers is {num_layers}.")
    return [str(c) for c in codes]


def blackmamba_config_from_original(json_config: dict, state_dict: Optional[dict] = None) -> BlackMambaConfig:
    """Build a `BlackMambaConfig` from the released config.json fields (checked against `state_dict` shapes if given)."""
    required = ("num_layers", "hidden_size", "state_size", "conv_dimension", "vocab_size", "expansion_factor",
                "ffn_hidden_size")
    missing = [k for k in required if k not in json_config]
    if missing:
        raise ValueError(f"The original config lacks the field(s) {missing}.")
    if json_config.get("add_bias_linear", False):
        raise ValueError("add_bias_linear=True (biased expert/projection layers) is not a released BlackMamba layout.")
    layer_types, expert_counts = [], set()
    for i, code in enumerate(_layer_codes(json_config)):
        if code == "r":
            layer_types.append("mamba")
        elif code == "1":
            layer_types.append("mlp")
        elif code.isdigit():
            layer_types.append("moe")
            expert_counts.add(int(code))
        else:
            raise ValueError(
                f"Layer {i}: mamba_moe_layers code {code!r} is not supported (only 'r', '1' and an expert count; the "
                "parallel Mamba+MoE blocks 'r<E>' were not released)."
            )
    if len(expert_counts) > 1:
        raise ValueError(f"All MoE layers must have the same number of experts, got {sorted(expert_counts)}.")
    hidden_size = int(json_config["hidden_size"])
    ffn = int(json_config["ffn_hidden_size"])
    config_kwargs = dict(
        vocab_size=int(json_config["vocab_size"]),
        hidden_size=hidden_size,
        layer_types=layer_types,
        state_size=int(json_config["state_size"]),
        conv_kernel=int(json_config["conv_dimension"]),
        expand=int(json_config["expansion_factor"]),
        ffn_hidden_size=ffn,
        num_experts=expert_counts.pop() if expert_counts else 8,
        gated_mlp=bool(json_config.get("swiglu", json_config.get("gated_linear_unit", True))),
        use_bias=False,
        layer_norm_eps=float(json_config.get("layernorm_epsilon", 1e-5)),
    )
    if json_config.get("dt_rank", "auto") != "auto":
        config_kwargs["time_step_rank"] = int(json_config["dt_rank"])
    if state_dict is not None:
        _check_shapes(config_kwargs, state_dict)
    return BlackMambaConfig(**config_kwargs)


def _check_shapes(kwargs: dict, state_dict: dict) -> None:
    """Raise if the config fields disagree with the checkpoint tensors (and fill `gated_mlp` from the shapes)."""
    def shape(key):
        if key not in state_dict:
            raise ValueError(f"The checkpoint lacks {key!r}.")
        return tuple(state_dict[key].shape)

    vocab, hidden = shape("embedding.word_embeddings.weight")
    if (vocab, hidden) != (kwargs["vocab_size"], kwargs["hidden_size"]):
        raise ValueError(f"embedding is {vocab}x{hidden}, config says {kwargs['vocab_size']}x{kwargs['hidden_size']}.")
    d_inner = kwargs["expand"] * hidden
    for i, layer_type in enumerate(kwargs["layer_types"]):
        prefix = f"decoder.layers.{i}.mixer."
        if layer_type == "mamba":
            checks = {
                "in_proj.weight": (2 * d_inner, hidden),
                "A_log": (d_inner, kwargs["state_size"]),
                "conv1d.weight": (d_inner, 1, kwargs["conv_kernel"]),
            }
        else:
            fc1 = "local_experts.0.linear_fc1.weight" if layer_type == "moe" else "linear_fc1.weight"
            rows = shape(prefix + fc1)[0]
            if rows not in (kwargs["ffn_hidden_size"], 2 * kwargs["ffn_hidden_size"]):
                raise ValueError(f"{prefix}{fc1} has {rows} rows, expected ffn_hidden_size or twice it.")
            kwargs["gated_mlp"] = rows == 2 * kwargs["ffn_hidden_size"]
            checks = {fc1: (rows, hidden)}
            if layer_type == "moe":
                num_experts = shape(prefix + "router.weight")[0]
                if num_experts != kwargs["num_experts"]:
                    raise ValueError(f"{prefix}router has {num_experts} experts, config says {kwargs['num_experts']}.")
        for key, expected in checks.items():
            if shape(prefix + key) != expected:
                raise ValueError(f"{prefix}{key} has shape {shape(prefix + key)}, expected {expected}.")


def convert_state_dict(original: dict) -> dict:
    """Rename the released keys to `BlackMambaForCausalLM` keys (the tied output layer is dropped)."""
    converted = {}
    for key, tensor in original.items():
        if key == "output_layer.weight":
            embedding = original.get("embedding.word_embeddings.weight")
            if embedding is None or not torch.equal(tensor, embedding):
                raise ValueError("output_layer.weight differs from the word embeddings: an untied head is not supported.")
            continue
        new_key = key
        for pattern, replacement in _RENAMES:
            new_key = pattern.sub(replacement, new_key)
        converted[new_key] = tensor
    return converted


def load_original_checkpoint(path: str) -> dict:
    """The state dict inside a released `pytorch_model.bin` (`{"model": state_dict}`), loaded with weights_only."""
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        return loaded["model"]
    raise ValueError(f"{path} is not a BlackMamba checkpoint: expected a dict with a 'model' state dict.")


def convert_blackmamba_checkpoint(
    checkpoint_path: str,
    config_path: str,
    output_dir: Optional[str] = None,
    tokenizer_path: Optional[str] = None,
    dtype: Optional[torch.dtype] = None,
) -> BlackMambaForCausalLM:
    """Convert and (with `output_dir`) save model + config (+ tokenizer). Returns the converted model.

    `dtype` defaults to the checkpoint's floating dtype; the SSM parameters A_log and D keep theirs (float32 in
    released checkpoints) only if `dtype` is None.
    """
    with open(config_path) as f:
        json_config = json.load(f)
    original = load_original_checkpoint(checkpoint_path)
    config = blackmamba_config_from_original(json_config, original)
    state_dict = convert_state_dict(original)
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    checkpoint_dtype = state_dict["backbone.embeddings.weight"].dtype
    config.dtype = checkpoint_dtype

    with torch.device("meta"):
        model = BlackMambaForCausalLM(config)
    expected = set(model.state_dict().keys()) - {"lm_head.weight"}
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ValueError(f"Checkpoint does not match the model. Missing keys: {missing}. Unused keys: {unexpected}.")
    model.load_state_dict(state_dict, strict=False, assign=True)
    model.lm_head.weight = model.backbone.embeddings.weight
    model.eval()

    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        if tokenizer_path is not None:
            _convert_tokenizer(tokenizer_path).save_pretrained(output_dir)
    return model


def _convert_tokenizer(tokenizer_path: str):
    """The GPT-NeoX-20B tokenizer (a `tokenizer.json`, or a directory holding tokenizer files)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    special = dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|padding|>",
                   unk_token="<|endoftext|>")
    if os.path.isdir(tokenizer_path):
        return AutoTokenizer.from_pretrained(tokenizer_path, **special)
    return PreTrainedTokenizerFast(tokenizer_file=tokenizer_path, **special)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="released pytorch_model.bin ({'model': state_dict})")
    parser.add_argument("--config", required=True, help="released config.json")
    parser.add_argument("--output", required=True, help="output directory (safetensors + config)")
    parser.add_argument("--tokenizer", default=None, help="GPT-NeoX-20B tokenizer.json or tokenizer directory")
    parser.add_argument("--dtype", default=None, choices=sorted(_DTYPES), help="cast weights (default: keep)")
    args = parser.parse_args(argv)
    model = convert_blackmamba_checkpoint(
        args.checkpoint, args.config, args.output, args.tokenizer, _DTYPES[args.dtype] if args.dtype else None
    )
    total = sum(p.numel() for p in model.parameters())
    print(f"Converted {total / 1e6:.1f}M parameters "
          f"({model.config.num_moe_layers} MoE layers x {model.config.num_experts} experts) to {args.output}")


if __name__ == "__main__":
    main()
