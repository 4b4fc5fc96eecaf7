#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Self-supervised SSAMBA pretraining on unlabeled audio (SSAST's joint discriminative + generative masked patch
modelling), with transformers' Trainer.

    # embedded unlabeled corpus (the keyword corpus' training voices, labels dropped)
    python training/pretrain_ssamba.py --output_dir outputs/ssamba-pretrained --num_train_epochs 3
    # your own unlabeled audio (training/data_loading.py; the training split's audio column is used): a Hub dataset
    # (or one in the offline cache), an audio folder, a save_to_disk folder, or any of them streamed
    python training/pretrain_ssamba.py --dataset_name org/name --audio_column_name audio --output_dir ...
    python training/pretrain_ssamba.py --train_dir my_audio_folder --output_dir ...
    python training/pretrain_ssamba.py --dataset_path my_audio --output_dir ...
    python training/pretrain_ssamba.py --dataset_name org/name --streaming --max_steps 5000 --output_dir ...

Spectrograms are computed on the fly, when the DataLoader asks for a clip: memory does not grow with the dataset.

Patches do not overlap in pretraining (strides = patch size); fine-tuning adapts the position embeddings to its own
strides and length (`resize_position_embeddings`, done by finetune_audio_classification.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from transformers import Trainer, TrainingArguments, set_seed

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TrainingBudgetCallback, end_distributed_run, max_train_minutes_field, parse_script_args  # noqa: E402
from data_loading import (  # noqa: E402
    AudioDatasetArguments,
    check_streaming_training,
    load_splits,
    on_the_fly,
    require_column,
)
from finetune_audio_classification import SpectrogramItems, first_items  # noqa: E402

import mamba_zoo  # noqa: E402,F401
from mamba_zoo import SSAMBAConfig, SSAMBAFeatureExtractor, SSAMBAForPreTraining  # noqa: E402

logger = logging.getLogger("pretrain_ssamba")


@dataclass
class PretrainModelArguments:
    model_size: str = field(default="tiny", metadata={"help": "tiny, small or base"})
    num_hidden_layers: Optional[int] = field(default=None, metadata={"help": "override the preset depth (24)"})
    hidden_size: Optional[int] = field(default=None)
    patch_frames: Optional[int] = field(
        default=None,
        metadata={"help": "frame-based tokens (SSAST-Frame: every mel bin x this many frames) instead of 16x16 patches"},
    )
    bidirectional_layer_pairing: bool = field(
        default=True,
        metadata={"help": "Vim/SSAMBA layer pairing (layer 2i forward, 2i+1 reversed, summed); False: every layer is "
                          "a bidirectional mixer in sequence (deeper at the same cost)"},
    )
    mask_patch_count: Optional[int] = field(
        default=None,
        metadata={"help": "masked patches per clip (SSAMBA: 250/300/400 of 512); default: half of the patches"},
    )
    mask_cluster_factor: int = field(default=3)
    generative_loss_weight: float = field(default=10.0)
    discriminative_loss_weight: float = field(default=1.0)
    drop_path_rate: float = field(default=0.1)
    share_mask_between_objectives: bool = field(
        default=False, metadata={"help": "one forward pass for both objectives instead of SSAST's two (2x faster)"}
    )


@dataclass
class PretrainDataArguments(AudioDatasetArguments):
    """Where the unlabeled audio comes from (`AudioDatasetArguments`: `--dataset_name`, `--train_dir`, `--dataset_path`,
    `--streaming`, `--audio_column_name`, `--train_split_name`, ...; none: the embedded corpus) and its features."""

    num_per_class: int = field(default=200, metadata={"help": "embedded corpus size (clips per keyword class)"})
    feature_preset: str = field(default="speechcommands", metadata={"help": "audioset, esc50 or speechcommands"})
    max_length: Optional[int] = field(default=None, metadata={"help": "frames (default: the preset's)"})
    max_train_minutes: Optional[float] = max_train_minutes_field()


def load_embedded_unlabeled(data_args: PretrainDataArguments) -> dict:
    from mamba_zoo.corpora import load_unlabeled_audio

    return {data_args.train_split_name: load_unlabeled_audio(num_per_class=data_args.num_per_class)}


def run(model_args: PretrainModelArguments, data_args: PretrainDataArguments, training_args: TrainingArguments,
        dataset=None):
    """Pretrain and save `SSAMBAForPreTraining` + feature extractor to `output_dir`; returns a results dict."""
    set_seed(training_args.seed)
    started = time.time()
    check_streaming_training(data_args, training_args)
    embedded = (lambda: {data_args.train_split_name: dataset}) if dataset is not None \
        else (lambda: load_embedded_unlabeled(data_args))
    source = load_splits(data_args, embedded=embedded)[data_args.train_split_name]
    require_column(source, data_args.audio_column_name, "--audio_column_name")
    fe_kwargs = {} if data_args.max_length is None else {"max_length": data_args.max_length}
    feature_extractor = SSAMBAFeatureExtractor.from_preset(data_args.feature_preset, **fe_kwargs)
    train = on_the_fly(source, SpectrogramItems(feature_extractor, data_args.audio_column_name))

    overrides = {k: v for k, v in (("num_hidden_layers", model_args.num_hidden_layers),
                                   ("hidden_size", model_args.hidden_size)) if v is not None}
    geometry = dict(max_length=feature_extractor.max_length, num_mel_bins=feature_extractor.num_mel_bins)
    if model_args.patch_frames:  # non-overlapping frame patches
        geometry.update(patch_size=[feature_extractor.num_mel_bins, model_args.patch_frames],
                        frequency_stride=feature_extractor.num_mel_bins, time_stride=model_args.patch_frames)
    mask_patch_count = model_args.mask_patch_count
    if mask_patch_count is None:
        mask_patch_count = SSAMBAConfig(**geometry).num_patches // 2
    config = SSAMBAConfig.from_preset(
        model_args.model_size, **geometry, mask_patch_count=mask_patch_count, mask_cluster_factor=model_args.mask_cluster_factor,
        generative_loss_weight=model_args.generative_loss_weight,
        discriminative_loss_weight=model_args.discriminative_loss_weight,
        drop_path_rate=model_args.drop_path_rate, bidirectional_layer_pairing=model_args.bidirectional_layer_pairing,
        **overrides,
    )
    model = SSAMBAForPreTraining(config)
    model.share_mask_between_objectives = model_args.share_mask_between_objectives
    training_args.remove_unused_columns = False
    training_args.label_names = []
    budget = TrainingBudgetCallback(data_args.max_train_minutes)
    trainer = Trainer(model=model, args=training_args, train_dataset=train, callbacks=[budget],
                      processing_class=feature_extractor)
    train_result = trainer.train()

    # pretext-task quality on the last 256 clips (first 256 of a stream): masked patch accuracy, reconstruction MSE
    model.eval()
    streamed = isinstance(train, torch.utils.data.IterableDataset)
    probe_items = first_items(train, 256) if streamed else [train[i] for i in range(max(0, len(train) - 256), len(train))]
    with torch.no_grad():
        probe = torch.stack([item["input_values"] for item in probe_items]).to(model.device)
        out = model(probe)
    results = {
        "pretraining_clips": "streamed" if streamed else len(train),
        "steps": train_result.global_step,
        "train_minutes": round(train_result.metrics["train_runtime"] / 60, 2),
        "final_discriminative_accuracy": round(float(out.discriminative_accuracy), 4),
        "final_generative_mse": round(float(out.generative_loss), 4),
        "chance_discriminative_accuracy": round(1 / config.mask_patch_count, 4),
        "total_minutes": round((time.time() - started) / 60, 2),
        **budget.summary(),
    }
    os.makedirs(training_args.output_dir, exist_ok=True)
    model.save_pretrained(training_args.output_dir)
    feature_extractor.save_pretrained(training_args.output_dir)
    Path(training_args.output_dir, "results.json").write_text(json.dumps(results, indent=2))
    if training_args.push_to_hub:
        trainer.push_to_hub()
    logger.info("pretraining results: %s", results)
    return results


def parse_args(argv=None):
    """`(model_args, data_args, training_args)` from `argv` (default: sys.argv[1:]) or one `.json` file; the Trainer
    flags keep TrainingArguments' own defaults."""
    return parse_script_args((PretrainModelArguments, PretrainDataArguments, TrainingArguments), {}, argv,
                             __doc__.split("\n\n")[0])


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv)
    results = run(model_args, data_args, training_args)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
    end_distributed_run()  # under torchrun on CPU: leave without gloo's exit-time abort
