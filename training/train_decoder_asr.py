#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Train MambaDecoderOnlyASR (MADEON) with `Trainer` and save a pipeline-ready checkpoint with its measured WER/CER.

Defaults: the embedded digit-string corpus (`mamba_zoo.corpora.load_transcribed("digits")`, espeak-ng and Festival
voices, split by voice so validation/test voices are never heard in training, plus a `heldout_engine` split spoken by
SAM, an engine never heard in training), log-mel frames through an 8x conv subsampler, a small
Mamba stack with parallel speech prefixing, greedy decoding; saves to `outputs/mamba-asr-digits/`:

    python training/train_decoder_asr.py
    python training/train_decoder_asr.py --speech_input units --num_units 200      # MADEON's discrete speech units
    python training/train_decoder_asr.py --ablation --max_steps 600                 # SP x {Mamba, Mamba-2} table
    python training/train_decoder_asr.py --per_device_train_batch_size 32 --learning_rate 1e-3 --num_train_epochs 10
    python training/train_decoder_asr.py --engines espeak-ng --heldout_engines festival,sam
    python training/train_decoder_asr.py args.json                                  # every flag as one JSON object
    torchrun --nproc_per_node 2 training/train_decoder_asr.py --output_dir outputs/mamba-asr-ddp ...

Flags: transformers' `TrainingArguments` (`--output_dir`, `--max_steps`, `--num_train_epochs`, `--learning_rate`,
`--per_device_train_batch_size`, `--warmup_steps`, `--seed`, `--use_cpu`, `--bf16`, `--fsdp`, `--push_to_hub`, ...)
plus the `ModelArguments`, `DataArguments` and `RunArguments` below (HfArgumentParser, as in transformers' example
scripts), so the script runs unchanged under `torchrun` / `accelerate launch`. Where this script's defaults differ from
`TrainingArguments`' own, a flag you do not pass takes the script's value (`TRAINING_DEFAULTS`):

    --output_dir outputs/mamba-asr-digits  --per_device_train_batch_size 16  --learning_rate 2e-3  --max_steps 1500
    --lr_scheduler_type cosine  --weight_decay 0.01  --max_grad_norm 1.0  --logging_steps 50  --save_strategy no
    --seed 0  --remove_unused_columns false  --disable_tqdm true
    --warmup_steps min(100, max_steps // 10)   (0.1, a ratio of the total steps, when training by epochs)

`--num_train_epochs` without `--max_steps` trains for that many epochs (the 1500-step default is then not applied).
`--max_train_minutes` (opt-in) stops training at a wall-clock budget and records it in `results.json`
(`stopped_by_time_budget`). The device is `TrainingArguments`' choice (CPU on a machine without accelerator;
`--use_cpu` forces it); the thread count is torch's / the launcher's unless `--threads` is given. The Trainer writes to
`--output_dir` (checkpoints only with a `--save_strategy`); the final model + processor + `results.json` go there too.
With `--ablation`, each configuration trains with the same `TrainingArguments` in `OUTPUT_DIR/runs/<mixer>-<prefix>`
(nothing is saved or pushed but `OUTPUT_DIR/ablation.json`).

Generalisation: `--engines` (default "espeak-ng:3,festival:1", the shares of the clips; "espeak-ng,festival" for equal shares) picks the training
engines, `--heldout_engines` (default "sam"; "" for none) those of the `heldout_engine` split, which is decoded like
test after training (`heldout_engine_wer`, `heldout_engine_cer` and, with several engines,
`heldout_engine_wer_<engine>`, percentages like `test_wer`, in `results.json`, the printed summary and the model card
`README.md`).

Then: `pipeline("automatic-speech-recognition", model="outputs/mamba-asr-digits", trust_remote_code=True)`.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mamba_zoo  # noqa: E402,F401  (registers the Auto* classes and the ASR pipeline)
from mamba_zoo import MambaASRConfig, MambaASRProcessor, MambaDecoderOnlyASR  # noqa: E402
from mamba_zoo.corpora import HELDOUT_SPLIT  # noqa: E402  (the split spoken only by engines never heard in training)
from common import (  # noqa: E402
    TrainingBudgetCallback,
    end_distributed_run,
    max_train_minutes_field,
    parse_engines,
    parse_script_args,
)


# ---------------------------------------------------------------------------------------------------------- data


def load_corpus(kind: str, num_train: int, num_eval: int, seed: int, engines=("espeak-ng",), heldout_engines=(),
                engine_weights=None):
    """The embedded corpus as in-memory lists (audio arrays decoded once; no torchcodec needed): `{split: (audio,
    text, voices)}` for train / validation / test and, with `heldout_engines`, the `heldout_engine` split (`voices`:
    each utterance's voice name, or None without a voice column)."""
    from mamba_zoo.corpora import load_transcribed

    corpus = load_transcribed(kind=kind, num_train=num_train, num_eval=num_eval, seed=seed, engines=tuple(engines),
                              engine_weights=engine_weights, heldout_engines=tuple(heldout_engines), progress=False)
    splits = {}
    for name in ("train", "validation", "test", HELDOUT_SPLIT):
        if name not in corpus:
            continue
        voices = [str(v) for v in corpus[name]["voice"]] if "voice" in corpus[name].column_names else None
        split = corpus[name].with_format("numpy", columns=["audio", "text"])
        audio, text = [], []
        for row in split:
            if int(row["audio"]["sampling_rate"]) != 16000:
                raise ValueError(f"Expected 16 kHz audio, got {row['audio']['sampling_rate']} Hz.")
            audio.append(np.asarray(row["audio"]["array"], dtype=np.float32))
            text.append(str(row["text"]))
        splits[name] = (audio, text, voices)
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
        inputs = processor(audio=[audio[i] for i in index], sampling_rate=16000).to(model.device)
        generated = model.generate(**inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False)
        for i, text in zip(index, processor.batch_decode(generated)):
            texts[i] = text
    return texts


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    import jiwer

    references = [MambaASRProcessor.normalize_text(r) for r in references]
    hypotheses = [MambaASRProcessor.normalize_text(h) or "<empty>" for h in hypotheses]
    return {"wer": 100 * jiwer.wer(references, hypotheses), "cer": 100 * jiwer.cer(references, hypotheses)}


def heldout_engine_rates(references: list[str], hypotheses: list[str], voices) -> dict:
    """`heldout_engine_wer` / `heldout_engine_cer` (percentages rounded like `test_wer`) over the held-out-engine split
    and, when it has several engines, `heldout_engine_wer_<engine>` for each."""
    from mamba_zoo.corpora import engine_of

    rates = error_rates(references, hypotheses)
    result = {"heldout_engine_wer": round(rates["wer"], 2), "heldout_engine_cer": round(rates["cer"], 2)}
    engines = [engine_of(v) for v in voices] if voices is not None else []
    if len(set(engines)) > 1:
        for engine in sorted(set(engines)):
            members = [i for i, e in enumerate(engines) if e == engine]
            result[f"heldout_engine_wer_{engine}"] = round(
                error_rates([references[i] for i in members], [hypotheses[i] for i in members])["wer"], 2)
    return result


def write_model_card(output_dir: Path, result: dict) -> None:
    """`README.md` beside the checkpoint: what was trained on what, and the measured error rates."""
    training = ", ".join(result.get("training_engines") or ["espeak-ng"])
    heldout = ", ".join(result.get("heldout_engines") or [])
    kind = result.get("kind", "digits")
    engines = f"Training engines: {training}."
    if heldout:
        engines += (f" Held-out engines: {heldout}, never heard in training (the `{HELDOUT_SPLIT}` rows measure how "
                    "the model generalises to an unseen synthesiser).")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: automatic-speech-recognition",
        "tags: [mamba, madeon, speech, mamba-zoo]",
        "license: apache-2.0",
        "---",
        "",
        f"# {output_dir.name}",
        "",
        f"MambaDecoderOnlyASR (MADEON: {result['mixer_type']} mixer, {result['speech_prefix']} speech prefixing, "
        f"{result['speech_input']} input) trained with `training/train_decoder_asr.py` on the embedded `{kind}` corpus "
        f"of mamba-zoo ({result.get('num_train', '?')} training utterances, {training} voices). Test voices are never "
        f"heard in training. {engines}",
        "",
        "| split | WER | CER |",
        "|---|---|---|",
        f"| test (held-out voices) | {result['test_wer']:.2f}% | {result['test_cer']:.2f}% |",
    ]
    if "heldout_engine_wer" in result:
        lines.append(f"| {HELDOUT_SPLIT} ({heldout}: never heard in training) | {result['heldout_engine_wer']:.2f}% | "
                     f"{result['heldout_engine_cer']:.2f}% |")
        for key in sorted(k for k in result if k.startswith("heldout_engine_wer_")):
            lines.append(f"| {HELDOUT_SPLIT}, {key[len('heldout_engine_wer_'):]} only | {result[key]:.2f}% | |")
    lines += [
        "",
        f"Parameters: {result['parameters_m']:.2f}M. Training: {result['steps']} steps"
        f"{' (cut short by the time budget)' if result.get('stopped_by_time_budget') else ''}, "
        f"{result['train_minutes']:.1f} min.",
        "",
        "```python",
        "import mamba_zoo  # or trust_remote_code=True without mamba-zoo installed",
        "from transformers import pipeline",
        f"asr = pipeline('automatic-speech-recognition', model='{output_dir}', trust_remote_code=True)",
        "```",
    ]
    (output_dir / "README.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------- arguments


@dataclass
class ModelArguments:
    speech_input: str = field(default="features", metadata={"choices": ["features", "units"],
                                                            "help": "log-mel frames or discrete k-means speech units"})
    num_units: int = field(default=200, metadata={"help": "k-means speech units (speech_input=units)"})
    speech_prefix: str = field(default="parallel", metadata={"choices": ["none", "parallel", "serial"],
                                                             "help": "speech prefixing (MADEON)"})
    mixer_type: str = field(default="mamba", metadata={"choices": ["mamba", "mamba2"], "help": "Mamba or Mamba-2"})
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    num_layers: int = field(default=6, metadata={"help": "Mamba blocks"})
    expand: int = field(default=2, metadata={"help": "Mamba inner width / hidden size"})
    state_size: int = field(default=16, metadata={"help": "SSM state size"})
    mamba2_head_dim: int = field(default=32, metadata={"help": "Mamba-2 head dimension"})
    subsampling_channels: int = field(default=32, metadata={"help": "channels of the conv subsampler"})
    num_subsampling_layers: int = field(default=3, metadata={"help": "log2 of the frame subsampling (8x)"})
    speech_mask_prob: float = field(default=0.0, metadata={"help": "input-embedding masking (MADEON)"})


@dataclass
class DataArguments:
    kind: str = field(default="digits", metadata={"choices": ["digits", "sentences"],
                                                  "help": "embedded corpus: digit strings or grammar sentences"})
    num_train: int = field(default=2000, metadata={"help": "training utterances"})
    num_eval: int = field(default=200, metadata={"help": "validation and test utterances (each)"})
    engines: str = field(default="espeak-ng:3,festival:1", metadata={
        "help": "training engines, comma-separated (espeak-ng, festival, sam), optionally with shares: "
                "espeak-ng:3,festival:1 (python -m mamba_zoo.corpora engines lists them)"})
    heldout_engines: str = field(default="sam", metadata={
        "help": "engines never heard in training, decoded after training as the heldout_engine split ('' for none)"})


@dataclass
class RunArguments:
    num_beams: int = field(default=1, metadata={"help": "beam size of the test-set decoding (1: greedy)"})
    threads: Optional[int] = field(
        default=None, metadata={"help": "torch intra-op threads (default: torch's / the launcher's choice)"})
    max_train_minutes: Optional[float] = max_train_minutes_field()
    ablation: bool = field(default=False, metadata={
        "help": "train --ablation_prefixes x --ablation_mixers for --max_steps each and print one table"})
    ablation_prefixes: str = field(default="none,parallel,serial", metadata={"help": "comma-separated speech prefixes"})
    ablation_mixers: str = field(default="mamba,mamba2", metadata={"help": "comma-separated mixer types"})


# Where this script's defaults differ from TrainingArguments' own; applied to every flag the user does not pass.
# warmup_steps: default_warmup(max_steps), resolved after parsing.
TRAINING_DEFAULTS = dict(
    output_dir="outputs/mamba-asr-digits", per_device_train_batch_size=16, learning_rate=2e-3, max_steps=1500,
    lr_scheduler_type="cosine", weight_decay=0.01, max_grad_norm=1.0, logging_steps=50, save_strategy="no",
    report_to="none", seed=0, dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
)


def default_warmup(max_steps: int) -> float:
    """min(100, max_steps // 10) steps; a 0.1 ratio when training by epochs (max_steps <= 0)."""
    return min(100, max_steps // 10) if max_steps > 0 else 0.1


def parse_args(argv=None):
    """`(model_args, data_args, run_args, training_args)` from `argv` (default: sys.argv[1:]) or one `.json` file."""
    from transformers import TrainingArguments

    def resolve_warmup(parsed, passed):
        if "warmup_steps" not in passed:
            parsed[-1].warmup_steps = default_warmup(parsed[-1].max_steps)

    return parse_script_args((ModelArguments, DataArguments, RunArguments, TrainingArguments), TRAINING_DEFAULTS,
                             argv, __doc__.split("\n\n")[0], resolve_warmup)


# ---------------------------------------------------------------------------------------------------------- train


def build_processor(model_args: ModelArguments, train_audio, seed: int) -> MambaASRProcessor:
    if model_args.speech_input == "features":
        return MambaASRProcessor.from_scratch(speech_input="features")
    processor = MambaASRProcessor.from_scratch(num_units=model_args.num_units, speech_input="features")
    return processor.fit_unit_tokenizer(train_audio, model_args.num_units, seed=seed)


_ENCODED = {}  # the ablation encodes the training audio once: key -> (the audio list, processor, dataset)


def ablation_arguments(training_args, model_args: ModelArguments):
    """`training_args` for one ablation run: its Trainer writes to `OUTPUT_DIR/runs/<mixer>-<prefix>`, never pushed
    (ablation runs save nothing but the table)."""
    run = copy.copy(training_args)
    name = f"{model_args.mixer_type}-{model_args.speech_prefix}"
    run.output_dir = str(Path(training_args.output_dir) / "runs" / name)
    run.push_to_hub = False
    return run


def train_one(model_args: ModelArguments, training_args, splits, num_beams: int = 1,
              max_train_minutes: Optional[float] = None, save: bool = True, corpus_info: Optional[dict] = None) -> dict:
    """Train one configuration (`model_args.speech_prefix` x `model_args.mixer_type`) and decode the test split (and
    the `heldout_engine` split, if `splits` has it, the same way); with `save`, save model + processor + results.json
    + a model card to `training_args.output_dir` (and push model + processor with `--push_to_hub`). `corpus_info`
    (kind, training / held-out engines) is recorded in the result."""
    from transformers import Trainer, set_seed

    set_seed(training_args.seed)
    started = time.time()
    train_audio = splits["train"][0]
    key = (model_args.speech_input, model_args.num_units, training_args.seed)
    if key not in _ENCODED or _ENCODED[key][0] is not train_audio:
        processor = build_processor(model_args, train_audio, training_args.seed)
        _ENCODED[key] = (train_audio, processor, EncodedDataset(processor, splits["train"][0], splits["train"][1]))
    _, processor, train_set = _ENCODED[key]
    prep_seconds = time.time() - started
    print(f"features/units for {len(train_set)} utterances in {prep_seconds:.1f}s", flush=True)
    speech_prefix, mixer_type = model_args.speech_prefix, model_args.mixer_type
    config = MambaASRConfig(
        hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_layers, expand=model_args.expand,
        state_size=model_args.state_size, mixer_type=mixer_type, speech_prefix=speech_prefix,
        mamba2_head_dim=model_args.mamba2_head_dim, subsampling_conv_channels=model_args.subsampling_channels,
        num_subsampling_layers=model_args.num_subsampling_layers, speech_mask_prob=model_args.speech_mask_prob,
        **processor.model_config_kwargs(),
    )
    model = MambaDecoderOnlyASR(config)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"[{speech_prefix}/{mixer_type}] {num_params / 1e6:.2f}M parameters, {len(train_set)} training utterances",
          flush=True)
    budget = TrainingBudgetCallback(max_train_minutes)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, data_collator=collate,
                      processing_class=processor if save else None, callbacks=[budget])
    train_started = time.time()
    trainer.train()
    train_seconds = time.time() - train_started
    eval_started = time.time()
    test_audio, test_text = splits["test"][0], splits["test"][1]
    hypotheses = transcribe(model, processor, test_audio, num_beams=num_beams)
    rates = error_rates(test_text, hypotheses)
    heldout = {}
    if HELDOUT_SPLIT in splits:  # engines never heard in training, decoded exactly as test
        heldout_audio, heldout_text, heldout_voices = (tuple(splits[HELDOUT_SPLIT]) + (None,))[:3]
        heldout_hypotheses = transcribe(model, processor, heldout_audio, num_beams=num_beams)
        heldout = {**heldout_engine_rates(heldout_text, heldout_hypotheses, heldout_voices),
                   f"{HELDOUT_SPLIT}_utterances": len(heldout_audio),
                   f"{HELDOUT_SPLIT}_examples": [{"reference": r, "hypothesis": h}
                                                 for r, h in list(zip(heldout_text, heldout_hypotheses))[:5]]}
    result = {
        "speech_prefix": speech_prefix, "mixer_type": mixer_type, "speech_input": model_args.speech_input,
        "parameters_m": round(num_params / 1e6, 3), "steps": trainer.state.global_step,
        "train_minutes": round(train_seconds / 60, 2), **budget.summary(),
        "prep_seconds": round(prep_seconds, 1), "eval_seconds": round(time.time() - eval_started, 1),
        "test_wer": round(rates["wer"], 2), "test_cer": round(rates["cer"], 2),
        "examples": [{"reference": r, "hypothesis": h} for r, h in list(zip(test_text, hypotheses))[:5]],
        "num_train": len(train_set), **(corpus_info or {}), **heldout,
    }
    if trainer.is_world_process_zero():
        print(json.dumps(result), flush=True)
        if heldout:
            per_engine = "".join(f"  {k[len('heldout_engine_wer_'):]} WER {v:.2f}%" for k, v in result.items()
                                 if k.startswith("heldout_engine_wer_"))
            print(f"test: WER {result['test_wer']:.2f}%  CER {result['test_cer']:.2f}%\n"
                  f"{HELDOUT_SPLIT} ({', '.join(result.get('heldout_engines') or [])}, never heard in training): "
                  f"WER {result['heldout_engine_wer']:.2f}%  CER {result['heldout_engine_cer']:.2f}%{per_engine}",
                  flush=True)
    if save:
        output_dir = Path(training_args.output_dir)
        if trainer.is_world_process_zero():
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "results.json").write_text(json.dumps(result, indent=2))
        trainer.save_model(str(output_dir))  # model + processor on the main process; pushes with --push_to_hub
        if trainer.is_world_process_zero():  # after save_model: a push writes the Trainer's own draft card there
            write_model_card(output_dir, result)
    return result


def main(argv=None):
    model_args, data_args, run_args, training_args = parse_args(argv)
    if run_args.threads:
        torch.set_num_threads(run_args.threads)

    started = time.time()
    engines, engine_weights = parse_engines(data_args.engines)
    heldout_engines = parse_engines(data_args.heldout_engines)[0]
    splits = load_corpus(data_args.kind, data_args.num_train, data_args.num_eval, training_args.seed, engines=engines,
                         heldout_engines=heldout_engines, engine_weights=engine_weights)
    print(f"corpus loaded in {time.time() - started:.1f}s: " + ", ".join(f"{k} {len(v[0])}" for k, v in splits.items())
          + f"; training engines {', '.join(engines)}"
          + (f"; held out {', '.join(heldout_engines)}" if heldout_engines else ""), flush=True)
    corpus_info = {"kind": data_args.kind, "training_engines": list(engines), "heldout_engines": list(heldout_engines)}
    if engine_weights is not None:
        corpus_info["engine_weights"] = list(engine_weights)
    if not run_args.ablation:
        return train_one(model_args, training_args, splits, run_args.num_beams, run_args.max_train_minutes,
                         corpus_info=corpus_info)
    rows = []
    for mixer_type in run_args.ablation_mixers.split(","):
        for speech_prefix in run_args.ablation_prefixes.split(","):
            run_model_args = replace(model_args, mixer_type=mixer_type, speech_prefix=speech_prefix)
            rows.append(train_one(run_model_args, ablation_arguments(training_args, run_model_args), splits,
                                  run_args.num_beams, run_args.max_train_minutes, save=False, corpus_info=corpus_info))
    if training_args.process_index == 0:
        heldout = HELDOUT_SPLIT in splits
        print("\n| mixer | speech prefixing | params (M) | steps | train min | test WER % | test CER % |"
              + (f" {HELDOUT_SPLIT} WER % |" if heldout else ""))
        print("|---|---|---|---|---|---|---|" + ("---|" if heldout else ""))
        for row in rows:
            print(f"| {row['mixer_type']} | {row['speech_prefix']} | {row['parameters_m']} | {row['steps']} | "
                  f"{row['train_minutes']} | {row['test_wer']} | {row['test_cer']} |"
                  + (f" {row['heldout_engine_wer']} |" if heldout else ""))
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "ablation.json").write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
    end_distributed_run()  # under torchrun on CPU: leave without gloo's exit-time abort
