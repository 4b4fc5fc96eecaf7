#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Train MambaDecoderOnlyASR (MADEON) with `Trainer` and save a pipeline-ready checkpoint with its measured WER/CER.

Defaults: the embedded digit-string corpus (`mamba_zoo.corpora.load_transcribed("digits")`, espeak-ng voices, split by
voice so validation/test voices are never heard in training), log-mel frames through a 4x conv subsampler, a small
Mamba stack with parallel speech prefixing, greedy decoding; saves to `outputs/mamba-asr-digits/`:

    python training/train_decoder_asr.py
    python training/train_decoder_asr.py --speech_input units --num_units 200      # MADEON's discrete speech units
    python training/train_decoder_asr.py --ablation --max_steps 600                 # SP x {Mamba, Mamba-2} table

Then: `pipeline("automatic-speech-recognition", model="outputs/mamba-asr-digits")`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mamba_zoo  # noqa: E402,F401  (registers the Auto* classes and the ASR pipeline)
from mamba_zoo import MambaASRConfig, MambaASRProcessor, MambaDecoderOnlyASR  # noqa: E402


# ---------------------------------------------------------------------------------------------------------- data


def load_corpus(kind: str, num_train: int, num_eval: int, seed: int):
    """The embedded corpus as in-memory lists (audio arrays decoded once; no torchcodec needed)."""
    try:
        from mamba_zoo.corpora import load_transcribed
    except ImportError:  # older layout of the corpora package
        from mamba_zoo.corpora.builders import load_transcribed

    corpus = load_transcribed(kind=kind, num_train=num_train, num_eval=num_eval, seed=seed, progress=False)
    splits = {}
    for name in ("train", "validation", "test"):
        split = corpus[name].with_format("numpy", columns=["audio", "text"])
        audio, text = [], []
        for row in split:
            if int(row["audio"]["sampling_rate"]) != 16000:
                raise ValueError(f"Expected 16 kHz audio, got {row['audio']['sampling_rate']} Hz.")
            audio.append(np.asarray(row["audio"]["array"], dtype=np.float32))
            text.append(str(row["text"]))
        splits[name] = (audio, text)
    return splits


class EncodedDataset(torch.utils.data.Dataset):
    """Processor outputs, one sample per item (speech prefix + text ids), unpadded."""

    def __init__(self, processor: MambaASRProcessor, audio, text, batch: int = 64):
        self.items = []
        speech_key = "input_features" if processor.speech_input == "features" else "speech_ids"
        for start in range(0, len(audio), batch):
            encoded = processor(audio=audio[start:start + batch], text=text[start:start + batch], sampling_rate=16000)
            for i in range(encoded["input_ids"].shape[0]):
                speech_len = int(encoded["speech_attention_mask"][i].sum())
                text_len = int(encoded["attention_mask"][i].sum())
                self.items.append({speech_key: encoded[speech_key][i, :speech_len],
                                   "input_ids": encoded["input_ids"][i, :text_len],
                                   "labels": encoded["labels"][i, :text_len]})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def collate(items: list[dict]) -> dict:
    """Right-pad speech (mask `speech_attention_mask`) and text (mask `attention_mask`, labels -100)."""
    speech_key = "input_features" if "input_features" in items[0] else "speech_ids"
    batch = len(items)
    speech_lengths = [item[speech_key].shape[0] for item in items]
    text_lengths = [item["input_ids"].shape[0] for item in items]
    speech = torch.zeros((batch, max(speech_lengths), *items[0][speech_key].shape[1:]), dtype=items[0][speech_key].dtype)
    input_ids = torch.zeros((batch, max(text_lengths)), dtype=torch.long)
    labels = torch.full((batch, max(text_lengths)), -100, dtype=torch.long)
    for i, item in enumerate(items):
        speech[i, :speech_lengths[i]] = item[speech_key]
        input_ids[i, :text_lengths[i]] = item["input_ids"]
        labels[i, :text_lengths[i]] = item["labels"]
    return {
        speech_key: speech,
        "speech_attention_mask": (torch.arange(speech.shape[1])[None] < torch.tensor(speech_lengths)[:, None]).long(),
        "input_ids": input_ids,
        "attention_mask": (torch.arange(input_ids.shape[1])[None] < torch.tensor(text_lengths)[:, None]).long(),
        "labels": labels,
    }


# ---------------------------------------------------------------------------------------------------------- eval


@torch.no_grad()
def transcribe(model, processor, audio, batch_size: int = 32, num_beams: int = 1, max_new_tokens: int = 96) -> list[str]:
    """Batched cached generation, longest clips first (less padding), returned in input order."""
    model.eval()
    order = np.argsort([-len(a) for a in audio])
    texts = [None] * len(audio)
    for start in range(0, len(audio), batch_size):
        index = order[start:start + batch_size]
        inputs = processor(audio=[audio[i] for i in index], sampling_rate=16000)
        generated = model.generate(**inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False)
        for i, text in zip(index, processor.batch_decode(generated)):
            texts[i] = text
    return texts


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    import jiwer

    references = [MambaASRProcessor.normalize_text(r) for r in references]
    hypotheses = [MambaASRProcessor.normalize_text(h) or "<empty>" for h in hypotheses]
    return {"wer": 100 * jiwer.wer(references, hypotheses), "cer": 100 * jiwer.cer(references, hypotheses)}


# ---------------------------------------------------------------------------------------------------------- train


def build_processor(args, train_audio) -> MambaASRProcessor:
    if args.speech_input == "features":
        return MambaASRProcessor.from_scratch(speech_input="features")
    processor = MambaASRProcessor.from_scratch(num_units=args.num_units, speech_input="features")
    return processor.fit_unit_tokenizer(train_audio, args.num_units, seed=args.seed)


_ENCODED = {}  # the ablation encodes the training audio once


def train_one(args, splits, speech_prefix: str, mixer_type: str, output_dir: Path | None, max_steps: int) -> dict:
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(args.seed)
    started = time.time()
    if args.speech_input not in _ENCODED:
        processor = build_processor(args, splits["train"][0])
        _ENCODED[args.speech_input] = (processor, EncodedDataset(processor, *splits["train"]))
    processor, train_set = _ENCODED[args.speech_input]
    prep_seconds = time.time() - started
    print(f"features/units for {len(train_set)} utterances in {prep_seconds:.1f}s", flush=True)
    config = MambaASRConfig(
        hidden_size=args.hidden_size, num_hidden_layers=args.num_layers, expand=args.expand, state_size=args.state_size,
        mixer_type=mixer_type, speech_prefix=speech_prefix, mamba2_head_dim=args.mamba2_head_dim,
        subsampling_conv_channels=args.subsampling_channels, num_subsampling_layers=args.num_subsampling_layers, speech_mask_prob=args.speech_mask_prob,
        **processor.model_config_kwargs(),
    )
    model = MambaDecoderOnlyASR(config)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"[{speech_prefix}/{mixer_type}] {num_params / 1e6:.2f}M parameters, {len(train_set)} training utterances",
          flush=True)
    training_args = TrainingArguments(
        output_dir=str(output_dir or Path(args.output_dir) / "runs") + "-trainer", per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate, max_steps=max_steps, warmup_steps=min(100, max_steps // 10),
        lr_scheduler_type="cosine", weight_decay=0.01, max_grad_norm=1.0, logging_steps=50, save_strategy="no",
        report_to=[], seed=args.seed, dataloader_num_workers=0, use_cpu=True, remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, data_collator=collate)
    train_started = time.time()
    trainer.train()
    train_seconds = time.time() - train_started
    eval_started = time.time()
    test_audio, test_text = splits["test"]
    hypotheses = transcribe(model, processor, test_audio, num_beams=args.num_beams)
    rates = error_rates(test_text, hypotheses)
    result = {
        "speech_prefix": speech_prefix, "mixer_type": mixer_type, "speech_input": args.speech_input,
        "parameters_m": round(num_params / 1e6, 3), "steps": max_steps, "train_minutes": round(train_seconds / 60, 2),
        "prep_seconds": round(prep_seconds, 1), "eval_seconds": round(time.time() - eval_started, 1),
        "test_wer": round(rates["wer"], 2), "test_cer": round(rates["cer"], 2),
        "examples": [{"reference": r, "hypothesis": h} for r, h in list(zip(test_text, hypotheses))[:5]],
    }
    print(json.dumps(result), flush=True)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        (output_dir / "results.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="digits", choices=["digits", "sentences"])
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_eval", type=int, default=200)
    parser.add_argument("--output_dir", default="outputs/mamba-asr-digits")
    parser.add_argument("--speech_input", default="features", choices=["features", "units"])
    parser.add_argument("--num_units", type=int, default=200, help="k-means speech units (speech_input=units)")
    parser.add_argument("--speech_prefix", default="parallel", choices=["none", "parallel", "serial"])
    parser.add_argument("--mixer_type", default="mamba", choices=["mamba", "mamba2"])
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=6)
    parser.add_argument("--expand", type=int, default=2)
    parser.add_argument("--state_size", type=int, default=16)
    parser.add_argument("--mamba2_head_dim", type=int, default=32)
    parser.add_argument("--subsampling_channels", type=int, default=32)
    parser.add_argument("--num_subsampling_layers", type=int, default=3, help="log2 of the frame subsampling (8x)")
    parser.add_argument("--speech_mask_prob", type=float, default=0.0, help="input-embedding masking (MADEON)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--max_steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablation", action="store_true",
                        help="train --ablation_prefixes x --ablation_mixers for --max_steps each and print one table")
    parser.add_argument("--ablation_prefixes", default="none,parallel,serial")
    parser.add_argument("--ablation_mixers", default="mamba,mamba2")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    splits = load_corpus(args.kind, args.num_train, args.num_eval, args.seed)
    print(f"corpus loaded in {time.time() - started:.1f}s: " + ", ".join(f"{k} {len(v[0])}" for k, v in splits.items()),
          flush=True)
    if not args.ablation:
        train_one(args, splits, args.speech_prefix, args.mixer_type, Path(args.output_dir), args.max_steps)
        return
    rows = []
    for mixer_type in args.ablation_mixers.split(","):
        for speech_prefix in args.ablation_prefixes.split(","):
            rows.append(train_one(args, splits, speech_prefix, mixer_type, None, args.max_steps))
    print(f"\n| mixer | speech prefixing | params (M) | steps | train min | test WER % | test CER % |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mixer_type']} | {row['speech_prefix']} | {row['parameters_m']} | {row['steps']} | "
              f"{row['train_minutes']} | {row['test_wer']} | {row['test_cer']} |")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "ablation.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
