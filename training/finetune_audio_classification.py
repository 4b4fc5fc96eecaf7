#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Fine-tune SSAMBA for audio classification with transformers' Trainer (full fine-tuning or LoRA via peft).

    # embedded keyword corpus (10 words + _silence_ + _unknown_, test voices never heard in training)
    python training/finetune_audio_classification.py --output_dir outputs/ssamba-kws \
        --model_name_or_path outputs/ssamba-pretrained --num_train_epochs 5
    # LoRA (r 16 on every mixer projection): only adapters + head train; merged into the saved checkpoint
    python training/finetune_audio_classification.py --output_dir outputs/ssamba-kws-lora --lora --learning_rate 3e-3 ...
    # your own data (training/data_loading.py): a Hub dataset (or one in the offline cache), audio folders,
    # save_to_disk folders, or any of them streamed; flags as in transformers' run_audio_classification.py
    python training/finetune_audio_classification.py --dataset_name org/name --dataset_config_name cfg \
        --audio_column_name audio --label_column_name label --eval_split_name validation --output_dir ...
    python training/finetune_audio_classification.py --train_dir clips/train --eval_dir clips/validation ...
    python training/finetune_audio_classification.py --dataset_path my_dataset --output_dir ...
    python training/finetune_audio_classification.py --dataset_name org/name --streaming --max_steps 2000 ...

Flags: transformers' `TrainingArguments` plus the model and data arguments below (HfArgumentParser). Audio is decoded
and turned into spectrograms on the fly, when the DataLoader asks for a clip (`--dataloader_num_workers N` runs it in N
processes), so memory does not grow with the dataset. The test split is evaluated at the end, a model card with the
measured numbers is written to the output directory, and `--push_to_hub` is passed through to the Trainer.
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
from data_loading import (  # noqa: E402
    AudioDatasetArguments,
    check_streaming_training,
    decode_audio,
    describe_source,
    label_names,
    load_splits,
    on_the_fly,
    require_column,
    user_source,
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
class DataArguments(AudioDatasetArguments):
    """The data flags: where the data comes from (`AudioDatasetArguments`, see `data_loading.py`: `--dataset_name`,
    `--train_dir/--eval_dir/--test_dir`, `--dataset_path`, `--streaming`, split and column names) and how it is used.
    With no source given, the embedded keyword corpus."""

    label_column_name: str = field(default="label", metadata={"help": "the column holding the class labels"})
    max_length_seconds: Optional[float] = field(default=None, metadata={
        "help": "training clips longer than this are cut at a random offset to this length (as in transformers' "
                "run_audio_classification.py); default: none (the feature window keeps the first --max_length "
                "frames)"})
    heldout_split_name: str = field(default="heldout_engine", metadata={
        "help": "split evaluated at the end beside test when present (accuracy overall and per engine)"})
    num_per_class: int = field(default=200, metadata={"help": "embedded corpus: training clips per class"})
    num_heldout_per_class: Optional[int] = field(default=None, metadata={
        "help": "embedded corpus: clips per class of the heldout_engine split (default: as test, num_per_class // 4)"})
    engines: str = field(default="espeak-ng", metadata={
        "help": "embedded corpus: training engines, comma-separated (espeak-ng, festival, sam), optionally with "
                "shares: espeak-ng:3,festival:1"})
    heldout_engines: str = field(default="", metadata={
        "help": "embedded corpus: engines heard in no training split, evaluated as the heldout_engine split"})
    train_per_class: Optional[int] = field(
        default=None, metadata={"help": "keep only this many training clips per class (few-label experiments)"}
    )
    feature_preset: str = field(default="speechcommands", metadata={"help": "audioset, esc50 or speechcommands"})
    max_length: Optional[int] = field(default=None, metadata={"help": "frames (default: the preset's)"})
    spec_augment: bool = field(default=True, metadata={"help": "random time shift + time/frequency masking"})
    waveform_augment_copies: int = field(default=0, metadata={
        "help": "voice + channel augmentation (speed, pitch, VTLP, rooms, band limits, codecs, noise; "
                "mamba_zoo.corpora.voice_augmentation): this many seeded augmented versions of every training clip "
                "are computed once (kept in memory: for small corpora), and each step draws one of the original and "
                "its copies"})
    waveform_augment_resynthesis: float = field(default=0.0, metadata={
        "help": "probability that an augmented copy also gets source-filter resynthesis (its voice source replaced: "
                "mamba_zoo.corpora.voice_augmentation.source_filter_resynthesis); 0: off"})
    freq_mask: int = field(default=24, metadata={"help": "SpecAugment: max masked mel bins"})
    time_mask: int = field(default=24, metadata={"help": "SpecAugment: max masked frames"})
    max_train_minutes: Optional[float] = max_train_minutes_field()


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def load_embedded_keywords(data_args: DataArguments):
    """The embedded keyword corpus (train / validation / test voices, plus `heldout_engine` with --heldout_engines)."""
    from mamba_zoo.corpora import load_keywords

    engines, weights = parse_engines(data_args.engines)
    heldout = engine_list(data_args.heldout_engines)
    return load_keywords(num_per_class=data_args.num_per_class, engines=engines, engine_weights=weights,
                         heldout_engines=heldout, num_heldout_per_class=data_args.num_heldout_per_class if heldout else None)


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


def subsample_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of every class (fewer if a class has fewer)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep.extend(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.asarray(keep))


class SpectrogramItems:
    """`prepare(row, index)` for `data_loading.on_the_fly`: one row's audio -> `{"input_values": (time, mel),
    "labels": class id}`, computed when the DataLoader asks for it.

    Training items (`augment`) get SSAST-style SpecAugment: a random circular time shift of up to `max_shift` frames,
    up to `freq_mask` mel bins and `time_mask` frames set to 0 (the normalised padding value's neighbourhood).
    `views`: augmented waveforms of the same clips (`(copies, n)` nested lists, map-style data only); each item is then
    drawn among the original and its copies. `max_samples`: longer training clips are cut at a random offset. Random
    draws use torch's generator (seeded by the Trainer), in the order view, crop, shift, masks."""

    def __init__(self, feature_extractor, audio_column: str, label_column: Optional[str] = None, label_ids=None,
                 augment=False, freq_mask=24, time_mask=24, max_shift=10, views=None, max_samples=None):
        self.feature_extractor, self.audio_column, self.label_column = feature_extractor, audio_column, label_column
        self.label_ids, self.augment, self.views, self.max_samples = label_ids, augment, views, max_samples
        self.freq_mask, self.time_mask, self.max_shift = freq_mask, time_mask, max_shift

    def spec_augment(self, x: torch.Tensor) -> torch.Tensor:
        """SpecAugment of one spectrogram `(time, mel)`, in place."""
        shift = int(torch.randint(-self.max_shift, self.max_shift + 1, ()))
        x = torch.roll(x, shift, dims=0)
        f = int(torch.randint(0, self.freq_mask + 1, ()))
        f0 = int(torch.randint(0, x.shape[1] - f + 1, ()))
        x[:, f0:f0 + f] = 0
        t = int(torch.randint(0, self.time_mask + 1, ()))
        t0 = int(torch.randint(0, x.shape[0] - t + 1, ()))
        x[t0:t0 + t, :] = 0
        return x

    def clip(self, row: dict, index) -> np.ndarray:
        if self.views is not None:
            view = int(torch.randint(0, len(self.views) + 1, ()))
            if view > 0:
                return self.views[view - 1][index]
        return decode_audio(row[self.audio_column], self.feature_extractor.sampling_rate, self.audio_column, index)

    def __call__(self, row: dict, index=None) -> dict:
        clip = self.clip(row, index)
        if self.max_samples is not None and len(clip) > self.max_samples:
            offset = int(torch.randint(0, len(clip) - self.max_samples + 1, ()))
            clip = clip[offset:offset + self.max_samples]
        x = self.feature_extractor(clip, sampling_rate=self.feature_extractor.sampling_rate,
                                   return_tensors="pt")["input_values"][0]
        if self.augment:
            x = self.spec_augment(x)
        item = {"input_values": x}
        if self.label_column is not None:
            item["labels"] = torch.tensor(self.label_ids(row[self.label_column]), dtype=torch.long)
        return item


def label_mapper(names: list[str], feature, column: str):
    """Row label -> class id: a ClassLabel column's ids as they are, a string column's values through `names`."""
    import datasets

    if isinstance(feature, datasets.ClassLabel):
        return int
    index = {name: i for i, name in enumerate(names)}

    def to_id(value):
        try:
            return index[str(value)]
        except KeyError:
            raise ValueError(f"Label {value!r} (column {column!r}) is not one of the training labels {names}.") \
                from None

    return to_id


def compute_features(clips, feature_extractor, batch_size=256) -> torch.Tensor:
    """Decoded clips -> one `(n, max_length, mel)` tensor (for probes and benchmarks; training featurises on the
    fly)."""
    chunks = [feature_extractor(clips[start:start + batch_size], sampling_rate=feature_extractor.sampling_rate,
                                return_tensors="pt")["input_values"] for start in range(0, len(clips), batch_size)]
    return torch.cat(chunks)


def first_items(dataset, count: int) -> list[dict]:
    """The first `count` items of a map-style or streaming on-the-fly dataset."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        import itertools

        return list(itertools.islice(iter(dataset), count))
    return [dataset[i] for i in range(min(count, len(dataset)))]


def make_compute_metrics():
    """Accuracy through `evaluate` (the offline module shipped in `mamba_zoo.metrics`)."""
    from mamba_zoo.metrics import load_metric

    accuracy = load_metric("accuracy")

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        logits = logits[0] if isinstance(logits, tuple) else logits
        return accuracy.compute(predictions=np.argmax(logits, axis=-1), references=labels)

    return compute_metrics


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
    source = user_source(data_args)
    if source is None:
        dataset = (f"mamba-zoo embedded keyword corpus, training engines {data_args.engines.replace(',', ', ')}, split "
                   "by voice" + (f"; held-out engines {data_args.heldout_engines.replace(',', ', ')} (heldout_engine_* "
                                 "rows: never heard in training)" if data_args.heldout_engines else ""))
    else:
        dataset = f"{describe_source(data_args)}, split `{data_args.train_split_name}`"
    if data_args.waveform_augment_copies:
        from mamba_zoo.corpora.voice_augmentation import WaveformAugmenter

        dataset += (f". Voice and channel augmentation: {data_args.waveform_augment_copies} seeded copies of every "
                    f"training clip ({WaveformAugmenter(**augmenter_settings(data_args)).describe()})")
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



def augmenter_settings(data_args) -> dict:
    """`WaveformAugmenter` settings that differ from its defaults, from the data arguments."""
    if not 0.0 <= data_args.waveform_augment_resynthesis <= 1.0:
        raise ValueError(f"--waveform_augment_resynthesis must be a probability in [0, 1], got "
                         f"{data_args.waveform_augment_resynthesis}.")
    return {"p_resynthesis": data_args.waveform_augment_resynthesis}


def run(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, dataset=None):
    """Fine-tune, evaluate on the test split, save model + feature extractor + model card. Returns the results dict.
    `dataset`: a DatasetDict used instead of the embedded corpus (when no data flag names a source)."""
    import datasets

    set_seed(training_args.seed)
    started = time.time()
    check_streaming_training(data_args, training_args)
    splits = load_splits(data_args, embedded=(lambda: dataset) if dataset is not None
                         else (lambda: load_embedded_keywords(data_args)))
    fe_kwargs = {} if data_args.max_length is None else {"max_length": data_args.max_length}
    feature_extractor = SSAMBAFeatureExtractor.from_preset(data_args.feature_preset, **fe_kwargs)
    sampling_rate = feature_extractor.sampling_rate
    audio_column, label_column = data_args.audio_column_name, data_args.label_column_name
    train_source = splits[data_args.train_split_name]
    require_column(train_source, audio_column, "--audio_column_name")
    require_column(train_source, label_column, "--label_column_name")
    names = label_names(train_source, label_column)
    to_id = label_mapper(names, train_source.features[label_column], label_column)
    id2label = {i: n for i, n in enumerate(names)}
    label2id = {n: i for i, n in id2label.items()}
    streaming = isinstance(train_source, datasets.IterableDataset)
    if streaming and (data_args.waveform_augment_copies or data_args.train_per_class):
        raise ValueError("--waveform_augment_copies and --train_per_class need map-style data: drop --streaming.")

    def items(name, augment=False, waveform_copies=0):
        source = splits[name]
        if name == data_args.train_split_name and data_args.train_per_class is not None:
            labels = np.asarray([to_id(v) for v in source[label_column]])
            source = source.select(subsample_per_class(labels, data_args.train_per_class, training_args.seed))
        views = None
        if waveform_copies > 0:  # every training clip decoded once, to augment it
            clips = [decode_audio(row[audio_column], sampling_rate, audio_column, i)
                     for i, row in enumerate(source.with_format("numpy"))]
            views = augmented_copies(clips, sampling_rate, waveform_copies, training_args.seed,
                                     settings=augmenter_settings(data_args),
                                     num_workers=min(2, os.cpu_count() or 1), desc=f"{name} augmentation")
        max_samples = None if not augment or data_args.max_length_seconds is None \
            else int(data_args.max_length_seconds * sampling_rate)
        prepare = SpectrogramItems(feature_extractor, audio_column, label_column, to_id, augment=augment,
                                   freq_mask=data_args.freq_mask, time_mask=data_args.time_mask, views=views,
                                   max_samples=max_samples)
        return on_the_fly(source, prepare), source

    train, _ = items(data_args.train_split_name, data_args.spec_augment, data_args.waveform_augment_copies)
    evaluation, test, heldout = (items(name) if name in splits else (None, None) for name in (
        data_args.eval_split_name, data_args.test_split_name, data_args.heldout_split_name))

    model = build_model(model_args, len(names), id2label, label2id, feature_extractor.max_length,
                        feature_extractor.num_mel_bins)
    if model_args.lora:
        model = wrap_lora(model, model_args)
    training_args.remove_unused_columns = False
    budget = TrainingBudgetCallback(data_args.max_train_minutes)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=evaluation[0],
        compute_metrics=make_compute_metrics(), callbacks=[budget], processing_class=feature_extractor,
    )
    train_result = trainer.train()
    results = {"train_clips": "streamed" if streaming else len(train),
               "waveform_augment_copies": data_args.waveform_augment_copies,
               "waveform_augment_resynthesis": data_args.waveform_augment_resynthesis,
               "train_steps": train_result.global_step,
               "train_minutes": round(train_result.metrics["train_runtime"] / 60, 2),
               "train_samples_per_second": train_result.metrics["train_samples_per_second"], **budget.summary()}
    if user_source(data_args) is not None:
        results["data_source"] = user_source(data_args)
    if evaluation[0] is not None:
        results["validation_accuracy"] = trainer.evaluate(evaluation[0], metric_key_prefix="eval")["eval_accuracy"]
    if test[0] is not None:
        prediction = trainer.predict(test[0], metric_key_prefix="test")
        results["test_accuracy"] = prediction.metrics["test_accuracy"]
        results["test_clips"] = len(prediction.label_ids)
    if heldout[0] is not None:  # engines never heard in training: the number that says whether the model generalises
        prediction = trainer.predict(heldout[0], metric_key_prefix="heldout")
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        source = heldout[1]
        voices = list(source["voice"]) if "voice" in (source.column_names or []) and not \
            isinstance(source, datasets.IterableDataset) else None
        for key, value in accuracy_by_engine(np.argmax(logits, -1), prediction.label_ids, voices).items():
            results[f"heldout_engine_{key}"] = value
        results["heldout_engine_clips"] = len(prediction.label_ids)

    final_model = trainer.model
    if model_args.lora:
        trainable = [n for n, p in final_model.named_parameters() if p.requires_grad]
        results["lora_trainable_parameters"] = sum(p.numel() for p in final_model.parameters() if p.requires_grad)
        assert all("lora_" in n or "classifier" in n for n in trainable), trainable
        if model_args.merge_lora:
            probe = torch.stack([item["input_values"] for item in first_items(test[0] or evaluation[0] or train, 16)])
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
