#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Fine-tune SSAMBA for audio classification with transformers' Trainer (full fine-tuning or LoRA via peft).

    # embedded keyword corpus (10 words + _silence_ + _unknown_, test voices never heard in training)
    python training/finetune_audio_classification.py --output_dir outputs/ssamba-kws \
        --model_name_or_path outputs/ssamba-pretrained --num_train_epochs 5
    # LoRA (r 16 on every mixer projection): only adapters + head train; merged into the saved checkpoint
    python training/finetune_audio_classification.py --output_dir outputs/ssamba-kws-lora --lora --learning_rate 3e-3 ...
    # any `datasets` audio dataset saved with save_to_disk (columns: audio, label)
    python training/finetune_audio_classification.py --dataset_path my_dataset --output_dir ...

Flags: transformers' `TrainingArguments` plus the model and data arguments below (HfArgumentParser). The test split is
evaluated at the end, a model card with the measured numbers is written to the output directory, and
`--push_to_hub` is passed through to the Trainer.
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

import numpy as np
import torch
from transformers import Trainer, TrainingArguments, set_seed

import mamba_zoo  # noqa: F401  (registers SSAMBA with the Auto* classes)
from mamba_zoo import SSAMBAConfig, SSAMBAFeatureExtractor, SSAMBAForAudioClassification
from mamba_zoo.configuration_ssamba import patch_shape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common.py, also when imported from elsewhere
from common import (  # noqa: E402
    TrainingBudgetCallback,
    augmented_copies,
    end_distributed_run,
    max_train_minutes_field,
    parse_engines,
    parse_script_args,
)

logger = logging.getLogger("finetune_audio_classification")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "SSAMBA checkpoint (pretrained or fine-tuned); random init when omitted."}
    )
    model_size: str = field(default="tiny", metadata={"help": "preset for random init: tiny, small or base"})
    num_hidden_layers: Optional[int] = field(default=None, metadata={"help": "override the preset depth"})
    hidden_size: Optional[int] = field(default=None, metadata={"help": "override the preset width"})
    patch_frames: Optional[int] = field(
        default=None,
        metadata={"help": "random init: frame-based tokens (SSAST-Frame) spanning every mel bin and this many frames, "
                          "instead of 16x16 patches. Best for speech (keywords, speakers)."},
    )
    bidirectional_layer_pairing: bool = field(
        default=True, metadata={"help": "random init: Vim/SSAMBA layer pairing (False: every layer in sequence)"}
    )
    frequency_stride: Optional[int] = field(
        default=None, metadata={"help": "patch stride along frequency (SSAMBA: 10 or 16); default: the patch size "
                                        "(the checkpoint's stride when fine-tuning one)"})
    time_stride: Optional[int] = field(default=None, metadata={"help": "patch stride along time; default as above"})
    drop_path_rate: float = field(default=0.1)
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters + the head only (peft)"})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_dropout: float = field(default=0.0)
    lora_target_modules: str = field(
        default="in_proj,out_proj,x_proj,x_proj_b,dt_proj,dt_proj_b",
        metadata={"help": "comma-separated module names (measured with --learning_rate 3e-3; 1e-2 diverges)"},
    )
    merge_lora: bool = field(default=True, metadata={"help": "merge the adapters into the saved checkpoint"})


@dataclass
class DataArguments:
    dataset_path: Optional[str] = field(
        default=None, metadata={"help": "a DatasetDict saved with save_to_disk; default: the embedded keyword corpus"}
    )
    audio_column: str = field(default="audio")
    label_column: str = field(default="label")
    train_split: str = field(default="train")
    eval_split: str = field(default="validation")
    test_split: str = field(default="test")
    num_per_class: int = field(default=200, metadata={"help": "embedded corpus: training clips per class"})
    engines: str = field(default="espeak-ng", metadata={
        "help": "embedded corpus: training engines, comma-separated (espeak-ng, festival, sam), optionally with "
                "shares: espeak-ng:3,festival:1"})
    heldout_engines: str = field(default="", metadata={
        "help": "embedded corpus: engines heard in no training split, evaluated as the heldout_engine split"})
    heldout_split: str = field(default="heldout_engine", metadata={
        "help": "split evaluated at the end beside test when present (accuracy overall and per engine)"})
    max_train_samples: Optional[int] = field(default=None)
    train_per_class: Optional[int] = field(
        default=None, metadata={"help": "keep only this many training clips per class (few-label experiments)"}
    )
    feature_preset: str = field(default="speechcommands", metadata={"help": "audioset, esc50 or speechcommands"})
    max_length: Optional[int] = field(default=None, metadata={"help": "frames (default: the preset's)"})
    spec_augment: bool = field(default=True, metadata={"help": "random time shift + time/frequency masking"})
    waveform_augment_copies: int = field(default=0, metadata={
        "help": "voice + channel augmentation (speed, pitch, VTLP, rooms, band limits, codecs, noise; "
                "mamba_zoo.corpora.voice_augmentation): this many seeded augmented versions of every training clip are computed "
                "once, and each step draws one of the original and its copies"})
    freq_mask: int = field(default=24, metadata={"help": "SpecAugment: max masked mel bins"})
    time_mask: int = field(default=24, metadata={"help": "SpecAugment: max masked frames"})
    max_train_minutes: Optional[float] = max_train_minutes_field()


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def load_audio_dataset(data_args: DataArguments):
    """The embedded keyword corpus, or a DatasetDict from disk."""
    if data_args.dataset_path is None:
        from mamba_zoo.corpora import load_keywords

        engines, weights = parse_engines(data_args.engines)
        return load_keywords(num_per_class=data_args.num_per_class, engines=engines, engine_weights=weights,
                             heldout_engines=engine_list(data_args.heldout_engines))
    from datasets import load_from_disk

    return load_from_disk(data_args.dataset_path)


def engine_list(text: str) -> tuple[str, ...]:
    """"espeak-ng:3,festival:1" or "espeak-ng,festival" -> ("espeak-ng", "festival"); "" -> ()."""
    return parse_engines(text)[0]


def accuracy_by_engine(predictions: np.ndarray, labels: np.ndarray, voices) -> dict:
    """Accuracy over all clips and over each synthesis engine's clips (noise-only clips, whose voice is empty, count
    only in the total)."""
    from mamba_zoo.corpora import engine_of

    correct = predictions == labels
    result = {"accuracy": float(correct.mean())}
    if voices is not None:
        engines = np.asarray([engine_of(v) if v else "" for v in voices])
        for engine in sorted(set(engines) - {""}):
            result[f"accuracy_{engine}"] = float(correct[engines == engine].mean())
    return result


def decode_audio(example_audio, sampling_rate: int) -> np.ndarray:
    """An `audio` cell as float32 at `sampling_rate`: {array, sampling_rate} dicts, or undecoded {bytes, path}
    (datasets' Audio(decode=False); decoded with soundfile, since torchcodec does not load with CPU torch here)."""
    from mamba_zoo.feature_extraction_ssamba import read_audio_file, resample_audio

    if isinstance(example_audio, dict) and example_audio.get("array") is not None:
        array = np.asarray(example_audio["array"], dtype=np.float32)
        return resample_audio(array, example_audio.get("sampling_rate", sampling_rate), sampling_rate)
    if isinstance(example_audio, dict) and (example_audio.get("bytes") or example_audio.get("path")):
        return read_audio_file(example_audio.get("bytes") or example_audio["path"], sampling_rate)
    if isinstance(example_audio, str):
        return read_audio_file(example_audio, sampling_rate)
    raise ValueError(f"Cannot read audio cell of type {type(example_audio)}.")


def decode_clips(dataset, sampling_rate: int, audio_column="audio") -> list:
    """Every clip of a split as float32 arrays at `sampling_rate`."""
    from datasets import Audio

    if isinstance(dataset.features.get(audio_column), Audio):
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    return [decode_audio(a, sampling_rate) for a in dataset[audio_column]]


def compute_features(dataset, feature_extractor, audio_column="audio", batch_size=256, desc="features", clips=None):
    """All clips of a split (or the decoded `clips`) as one `(n, max_length, mel)` float32 tensor (the features are
    deterministic, so they are computed once instead of every epoch)."""
    from tqdm.auto import tqdm

    clips = decode_clips(dataset, feature_extractor.sampling_rate, audio_column) if clips is None else clips
    chunks = []
    for start in tqdm(range(0, len(clips), batch_size), desc=desc, leave=False):
        values = feature_extractor(clips[start:start + batch_size], sampling_rate=feature_extractor.sampling_rate,
                                   return_tensors="pt")
        chunks.append(values["input_values"])
    return torch.cat(chunks)


def subsample_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of every class (fewer if a class has fewer)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep.extend(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.asarray(keep))


class SpectrogramDataset(torch.utils.data.Dataset):
    """Precomputed spectrograms `(n, time, mel)` + labels; with `augment`, SSAST-style SpecAugment (up to
    `freq_mask` mel bins and `time_mask` frames masked to 0, the normalised padding value's neighbourhood) and a random
    circular time shift of up to `max_shift` frames. `views`: spectrograms of augmented versions of the same clips,
    `(copies, n, time, mel)`; each item is then drawn from the original and its copies."""

    def __init__(self, features, labels=None, augment=False, freq_mask=24, time_mask=24, max_shift=10, views=None):
        self.features, self.labels, self.augment = features, labels, augment
        self.freq_mask, self.time_mask, self.max_shift = freq_mask, time_mask, max_shift
        self.views = views

    def __len__(self):
        return self.features.shape[0]

    def __getitem__(self, i):
        x = self.features[i]
        if self.views is not None:
            view = int(torch.randint(0, self.views.shape[0] + 1, ()))
            x = x if view == 0 else self.views[view - 1, i]
        if self.augment:
            x = x.clone()
            shift = int(torch.randint(-self.max_shift, self.max_shift + 1, ()))
            x = torch.roll(x, shift, dims=0)
            f = int(torch.randint(0, self.freq_mask + 1, ()))
            f0 = int(torch.randint(0, x.shape[1] - f + 1, ()))
            x[:, f0:f0 + f] = 0
            t = int(torch.randint(0, self.time_mask + 1, ()))
            t0 = int(torch.randint(0, x.shape[0] - t + 1, ()))
            x[t0:t0 + t, :] = 0
        item = {"input_values": x}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def accuracy_metrics(eval_pred):
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


# ----------------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------------


def build_model(model_args: ModelArguments, num_labels, id2label, label2id, max_length, num_mel_bins):
    """A classifier from a checkpoint (position embeddings adapted to the fine-tuning geometry, SSAST-style) or from a
    preset with random weights."""
    labels = dict(num_labels=num_labels, id2label=id2label, label2id=label2id)
    if model_args.model_name_or_path:
        config = SSAMBAConfig.from_pretrained(model_args.model_name_or_path)
        same_head = config.num_labels == num_labels and config.id2label == id2label
        model = SSAMBAForAudioClassification.from_pretrained(
            model_args.model_name_or_path, drop_path_rate=model_args.drop_path_rate,
            **({} if same_head else labels), ignore_mismatched_sizes=not same_head,
        )
        frequency_stride = model_args.frequency_stride or model.config.frequency_stride
        time_stride = model_args.time_stride or model.config.time_stride
        geometry = (frequency_stride, time_stride, max_length, num_mel_bins)
        current = (model.config.frequency_stride, model.config.time_stride, model.config.max_length,
                   model.config.num_mel_bins)
        if geometry != current:
            logger.info("Adapting position embeddings from %s to %s (stride_f, stride_t, frames, mels)", current, geometry)
            model.resize_position_embeddings(max_length=max_length, frequency_stride=frequency_stride,
                                             time_stride=time_stride, num_mel_bins=num_mel_bins)
        return model
    overrides = {k: v for k, v in (("num_hidden_layers", model_args.num_hidden_layers),
                                   ("hidden_size", model_args.hidden_size)) if v is not None}
    patch = [num_mel_bins, model_args.patch_frames] if model_args.patch_frames else 16
    patch_frequency, patch_time = patch_shape(patch)
    config = SSAMBAConfig.from_preset(
        model_args.model_size, max_length=max_length, num_mel_bins=num_mel_bins, patch_size=patch,
        frequency_stride=model_args.frequency_stride or patch_frequency,
        time_stride=model_args.time_stride or patch_time,
        drop_path_rate=model_args.drop_path_rate, bidirectional_layer_pairing=model_args.bidirectional_layer_pairing,
        **overrides, **labels,
    )
    return SSAMBAForAudioClassification(config)


def wrap_lora(model, model_args: ModelArguments):
    """peft LoRA on the mixers' projections (explicit target_modules) with the classification head trained in full."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=[m.strip() for m in model_args.lora_target_modules.split(",") if m.strip()],
        modules_to_save=["classifier"],
    )
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA: %d trainable of %d parameters (%.2f%%)", trainable, total, 100 * trainable / total)
    return peft_model


# ----------------------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------------------


def write_model_card(output_dir, model, results: dict, training_args, model_args, data_args, base_model=None):
    labels = ", ".join(f"`{name}`" for name in model.config.id2label.values())
    dataset = data_args.dataset_path or (
        f"mamba-zoo embedded keyword corpus, training engines {data_args.engines.replace(',', ', ')}, split by voice"
        + (f"; held-out engines {data_args.heldout_engines.replace(',', ', ')} (heldout_engine_* rows: never heard "
           "in training)" if data_args.heldout_engines else ""))
    if data_args.waveform_augment_copies:
        from mamba_zoo.corpora.voice_augmentation import WaveformAugmenter

        dataset += (f". Voice and channel augmentation: {data_args.waveform_augment_copies} seeded copies of every "
                    f"training clip ({WaveformAugmenter().describe()})")
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in results.items())
    card = f"""---
library_name: transformers
pipeline_tag: audio-classification
license: apache-2.0
tags:
- audio-classification
- ssamba
- mamba
- mamba-zoo
---

# SSAMBA keyword classifier

SSAMBA (Self-Supervised Audio Mamba) fine-tuned with `training/finetune_audio_classification.py` of mamba-zoo
{"from `" + str(base_model) + "`" if base_model else "from random initialisation"}{" with LoRA (merged)" if model_args.lora else ""}.

- Architecture: width {model.config.hidden_size}, {model.config.num_hidden_layers} bidirectional Mamba layers, patch
  {model.config.patch_size} with strides ({model.config.frequency_stride}, {model.config.time_stride}),
  {model.config.max_length} frames x {model.config.num_mel_bins} mel bins.
- Data: {dataset}.
- Labels: {labels}.

## Results (measured by the training script)

| metric | value |
|---|---|
{rows}

## Usage

```python
import mamba_zoo  # or trust_remote_code=True without mamba-zoo installed
from transformers import pipeline
clf = pipeline("audio-classification", model="{output_dir}", trust_remote_code=True)
clf("clip.wav")
```
"""
    Path(output_dir, "README.md").write_text(card)


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, dataset=None):
    """Fine-tune, evaluate on the test split, save model + feature extractor + model card. Returns the results dict."""
    set_seed(training_args.seed)
    started = time.time()
    dataset = load_audio_dataset(data_args) if dataset is None else dataset
    fe_kwargs = {} if data_args.max_length is None else {"max_length": data_args.max_length}
    feature_extractor = SSAMBAFeatureExtractor.from_preset(data_args.feature_preset, **fe_kwargs)
    label_feature = dataset[data_args.train_split].features[data_args.label_column]
    names = label_feature.names
    id2label = {i: n for i, n in enumerate(names)}
    label2id = {n: i for i, n in id2label.items()}

    def split(name, augment=False, per_class=None, max_samples=None, waveform_copies=0):
        ds = dataset[name]
        labels = np.asarray(ds[data_args.label_column])
        if per_class is not None:
            ds = ds.select(subsample_per_class(labels, per_class, training_args.seed))
        if max_samples is not None:
            ds = ds.select(range(min(max_samples, len(ds))))
        sampling_rate = feature_extractor.sampling_rate
        clips = decode_clips(ds, sampling_rate, data_args.audio_column)
        features = compute_features(ds, feature_extractor, desc=f"{name} features", clips=clips)
        views = None
        if waveform_copies > 0:
            copies = augmented_copies(clips, sampling_rate, waveform_copies, training_args.seed,
                                      num_workers=min(2, os.cpu_count() or 1), desc=f"{name} augmentation")
            views = torch.stack([compute_features(None, feature_extractor, desc=f"{name} augmented features",
                                                  clips=copy) for copy in copies])
        return SpectrogramDataset(features, torch.tensor(ds[data_args.label_column]), augment=augment,
                                  freq_mask=data_args.freq_mask, time_mask=data_args.time_mask, views=views)

    train = split(data_args.train_split, data_args.spec_augment, data_args.train_per_class, data_args.max_train_samples,
                  waveform_copies=data_args.waveform_augment_copies)
    evaluation = split(data_args.eval_split) if data_args.eval_split in dataset else None
    test = split(data_args.test_split) if data_args.test_split in dataset else None
    heldout = split(data_args.heldout_split) if data_args.heldout_split in dataset else None

    model = build_model(model_args, len(names), id2label, label2id, feature_extractor.max_length,
                        feature_extractor.num_mel_bins)
    if model_args.lora:
        model = wrap_lora(model, model_args)
    training_args.remove_unused_columns = False
    budget = TrainingBudgetCallback(data_args.max_train_minutes)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=evaluation,
        compute_metrics=accuracy_metrics, callbacks=[budget], processing_class=feature_extractor,
    )
    train_result = trainer.train()
    results = {"train_clips": len(train), "waveform_augment_copies": data_args.waveform_augment_copies,
               "train_steps": train_result.global_step,
               "train_minutes": round(train_result.metrics["train_runtime"] / 60, 2), **budget.summary()}
    if evaluation is not None:
        results["validation_accuracy"] = trainer.evaluate(evaluation, metric_key_prefix="eval")["eval_accuracy"]
    if test is not None:
        results["test_accuracy"] = trainer.evaluate(test, metric_key_prefix="test")["test_accuracy"]
        results["test_clips"] = len(test)
    if heldout is not None:  # engines never heard in training: the number that says whether the model generalises
        prediction = trainer.predict(heldout, metric_key_prefix="heldout")
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        voices = dataset[data_args.heldout_split]["voice"] if "voice" in dataset[data_args.heldout_split].column_names \
            else None
        for key, value in accuracy_by_engine(np.argmax(logits, -1), heldout.labels.numpy(), voices).items():
            results[f"heldout_engine_{key}"] = value
        results["heldout_engine_clips"] = len(heldout)

    final_model = trainer.model
    if model_args.lora:
        trainable = [n for n, p in final_model.named_parameters() if p.requires_grad]
        results["lora_trainable_parameters"] = sum(p.numel() for p in final_model.parameters() if p.requires_grad)
        assert all("lora_" in n or "classifier" in n for n in trainable), trainable
        if model_args.merge_lora:
            probe = test.features[:16] if test is not None else train.features[:16]
            final_model.eval()
            with torch.no_grad():
                before = final_model(input_values=probe).logits
                final_model = final_model.merge_and_unload()
                after = final_model(input_values=probe).logits
            results["lora_merge_max_logit_diff"] = float((before - after).abs().max())
    results["total_minutes"] = round((time.time() - started) / 60, 2)

    output_dir = training_args.output_dir
    os.makedirs(output_dir, exist_ok=True)
    final_model.save_pretrained(output_dir)  # a plain SSAMBA checkpoint, or peft adapters with --merge_lora False
    feature_extractor.save_pretrained(output_dir)
    card_model = model.base_model.model if model_args.lora and not model_args.merge_lora else final_model
    write_model_card(output_dir, card_model, results, training_args, model_args, data_args,
                     base_model=model_args.model_name_or_path)
    Path(output_dir, "results.json").write_text(json.dumps(results, indent=2))
    if training_args.push_to_hub:
        push_output_dir(output_dir, training_args)
    logger.info("results: %s", results)
    return results


def push_output_dir(output_dir, training_args: TrainingArguments) -> None:
    """Upload the output directory as written here (merged model, feature extractor, this script's model card) to
    `--hub_model_id` (default: the directory name), with TrainingArguments' hub token / privacy settings.
    (`Trainer.push_to_hub` would save the peft wrapper instead of the merged model and replace the model card.)"""
    from huggingface_hub import create_repo, upload_folder

    repo_id = training_args.hub_model_id or Path(output_dir).name
    create_repo(repo_id, exist_ok=True, private=training_args.hub_private_repo, token=training_args.hub_token)
    upload_folder(repo_id=repo_id, folder_path=output_dir, token=training_args.hub_token,
                  commit_message="SSAMBA fine-tuned with mamba-zoo", ignore_patterns=["checkpoint-*", "runs/*"])


def parse_args(argv=None):
    """`(model_args, data_args, training_args)` from `argv` (default: sys.argv[1:]) or one `.json` file; the Trainer
    flags keep TrainingArguments' own defaults."""
    return parse_script_args((ModelArguments, DataArguments, TrainingArguments), {}, argv, __doc__.split("\n\n")[0])


def main(argv=None):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_args, data_args, training_args = parse_args(argv)
    results = run(model_args, data_args, training_args)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
    end_distributed_run()  # under torchrun on CPU: leave without gloo's exit-time abort
