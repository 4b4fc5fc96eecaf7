#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Train MambaDecoderOnlyASR (MADEON) with `Trainer` and save a pipeline-ready checkpoint with its measured WER/CER.

Defaults: the embedded digit-string corpus (`mamba_zoo.corpora.load_transcribed("digits")`, espeak-ng, Festival and
Pico voices (3:1:1), split by voice so validation/test voices are never heard in training, plus a `heldout_engine`
split spoken by SAM, an engine never heard in training), log-mel frames through an 8x conv subsampler, a small
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

Your own data (`training/data_loading.py`; transformers' example-script flag names): any split with an audio column
(`--audio_column_name`, default `audio`) and a transcript column (`--text_column_name`, default `text`); audio is
decoded with soundfile (no torchcodec needed) and resampled to 16 kHz, the rest of the recipe is unchanged:

    python training/train_decoder_asr.py --dataset_name org/speech --text_column_name sentence
    python training/train_decoder_asr.py --train_dir clips/train --test_dir clips/test  # audio + metadata.csv
    python training/train_decoder_asr.py --dataset_path my_corpus                       # a save_to_disk DatasetDict
    python training/train_decoder_asr.py --dataset_name org/speech --streaming --max_steps 2000

The training split is prepared on the fly (`data_loading.on_the_fly`): when the DataLoader asks for an item, its clip
is decoded and run through the processor (log-mel frames or speech units + token ids), so memory does not grow with the
training set and nothing is computed before training. The split decoded after training is `--test_split_name` (else
`--eval_split_name`; `test_wer` / `validation_wer` in `results.json`), plus the embedded corpus's `heldout_engine`:
these are decoded into memory once, to be generated in length-sorted batches; bound them with `--max_eval_samples`.
The tokenizer's characters are the default `a-z ' ` plus any other character of the training transcripts (only that
column is read; with `--streaming`, the first `--vocabulary_samples` transcripts); with `--speech_input units` the
k-means units are fitted on the first `--unit_fit_samples` training clips (default: all of map-style data, 2000 of a
stream), decoded for the fit only. `--max_duration_in_seconds S` drops longer training clips before training (as
transformers' run_speech_recognition_ctc.py does): for map-style data a `datasets.Dataset.filter` pass that reads each
clip's file header (soundfile.info; an array's length for in-memory audio), nothing decoded or kept; for a stream the
same test, lazily. `--streaming` training needs `--max_steps` (the default, 1500, is one).

Then: `pipeline("automatic-speech-recognition", model="outputs/mamba-asr-digits", trust_remote_code=True)`.
"""

from __future__ import annotations

import copy
import json
import os
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
from mamba_zoo.processing_mamba_asr import DEFAULT_CHARACTERS  # noqa: E402
import data_loading  # noqa: E402
from data_loading import TranscribedAudioDatasetArguments  # noqa: E402
from common import (  # noqa: E402
    TrainingBudgetCallback,
    end_distributed_run,
    max_train_minutes_field,
    parse_engines,
    parse_script_args,
)


# ---------------------------------------------------------------------------------------------------------- data


SAMPLING_RATE = 16000  # the processor's rate: every clip is decoded (and resampled) to it


@dataclass
class ASRData:
    """The data of a run: `train` (a `datasets.Dataset` or `IterableDataset`, audio undecoded: prepared on the fly),
    `evaluation` (`{role: (audio, text, voices)}` decoded into memory: `test` or `validation`, and `heldout_engine`
    when the data has it; `voices`: each utterance's voice, or None without a voice column), the column names and
    what the processor may read up front."""

    train: object
    evaluation: dict
    audio_column: str = "audio"
    text_column: str = "text"
    vocabulary_samples: int = 10000
    unit_fit_samples: Optional[int] = None


def decode_clips(split, audio_column: str, limit: Optional[int] = None) -> list[np.ndarray]:
    """The first `limit` clips of a split (all with None), decoded (the k-means fit of the speech units)."""
    import itertools

    rows = split.select_columns([audio_column])
    rows = itertools.islice(rows if data_loading.is_stream(split) else rows.with_format("numpy"), limit)
    return [data_loading.decode_audio(row[audio_column], SAMPLING_RATE, audio_column, i) for i, row in enumerate(rows)]


def encode_item(processor: MambaASRProcessor, audio: np.ndarray, text: str) -> dict:
    """One training sample: the processor's outputs, unpadded (speech prefix: `input_features` or `speech_ids`; text
    ids and labels)."""
    speech_key = "input_features" if processor.speech_input == "features" else "speech_ids"
    encoded = processor(audio=[audio], text=[text], sampling_rate=SAMPLING_RATE)
    speech_len = int(encoded["speech_attention_mask"][0].sum())
    text_len = int(encoded["attention_mask"][0].sum())
    return {speech_key: encoded[speech_key][0, :speech_len], "input_ids": encoded["input_ids"][0, :text_len],
            "labels": encoded["labels"][0, :text_len]}


def training_items(processor: MambaASRProcessor, split, audio_column: str = "audio", text_column: str = "text"):
    """The training split for the Trainer, without holding it in memory.

    Map-style data is encoded once (`encode_item`: decode, log-mel features, text ids) with `datasets.map` into an
    Arrow file in a temporary folder, memory-mapped and deleted when the process ends: the features cost about 20 ms
    per utterance, more than this small model's training step per utterance, so computing them every epoch tripled
    the run. A stream is encoded on the fly (`data_loading.on_the_fly`) as it is read."""
    import atexit
    import shutil
    import tempfile

    import datasets

    split = split.select_columns([audio_column, text_column])

    def prepare(row, index):
        audio = data_loading.decode_audio(row[audio_column], SAMPLING_RATE, audio_column, index)
        return encode_item(processor, audio, str(row[text_column]))

    if data_loading.is_stream(split):
        return data_loading.on_the_fly(split, prepare)
    speech = (datasets.Array2D(shape=(None, processor.feature_extractor.feature_size), dtype="float32")
              if processor.speech_input == "features" else datasets.List(datasets.Value("int64")))
    speech_key = "input_features" if processor.speech_input == "features" else "speech_ids"
    features = datasets.Features({speech_key: speech, "input_ids": datasets.List(datasets.Value("int64")),
                                  "labels": datasets.List(datasets.Value("int64"))})
    folder = tempfile.mkdtemp(prefix="mamba-zoo-encoded-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)

    def encode(row, index):
        return {k: v.numpy() for k, v in prepare(row, index).items()}

    encoded = split.with_format("numpy").map(
        encode, with_indices=True, remove_columns=split.column_names, features=features,
        cache_file_name=os.path.join(folder, "train.arrow"), desc="encoding the training utterances")
    return encoded.with_format("torch")


def transcript_characters(split, text_column: str, limit: int) -> str:
    """The tokenizer's characters: `DEFAULT_CHARACTERS` (a-z, space, apostrophe: the embedded corpora's) then every
    other character of the normalised training transcripts, sorted (all of a map-style split's, only that column
    read; the first `limit` of a stream's: `data_loading.column_texts`)."""
    seen = set()
    for text in data_loading.column_texts(split, text_column, limit):
        seen.update(MambaASRProcessor.normalize_text(text))
    return DEFAULT_CHARACTERS + "".join(sorted(seen - set(DEFAULT_CHARACTERS)))


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
def transcribe(model, processor, audio, batch_size: int = 32, num_beams: int = 1, max_new_tokens: int = 96,
               ctc_weight: Optional[float] = None) -> list[str]:
    """Batched cached generation, longest clips first (less padding), returned in input order. `ctc_weight`: joint
    CTC/attention decoding weight (default: the model config's `ctc_decoding_weight`)."""
    model.eval()
    order = np.argsort([-len(a) for a in audio])
    texts = [None] * len(audio)
    for start in range(0, len(audio), batch_size):
        index = order[start:start + batch_size]
        inputs = processor(audio=[audio[i] for i in index], sampling_rate=16000).to(model.device)
        generated = model.generate(**inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                                   ctc_weight=ctc_weight)
        for i, text in zip(index, processor.batch_decode(generated)):
            texts[i] = text
    return texts


_METRICS = {}  # name -> the loaded `evaluate` module (loaded once)


def error_rate(name: str, predictions: list[str], references: list[str]) -> float:
    """`mamba_zoo.metrics.load_metric(name)` ("wer" / "cer": offline `evaluate` modules, jiwer inside) on the texts as
    given. Kept in memory: no cache files, so the processes of a launched run do not share one."""
    from mamba_zoo.metrics import load_metric

    if name not in _METRICS:
        _METRICS[name] = load_metric(name, keep_in_memory=True)
    return float(_METRICS[name].compute(predictions=list(predictions), references=list(references)))


def error_rates(references: list[str], hypotheses: list[str]) -> dict:
    """WER and CER in percent, after `MambaASRProcessor.normalize_text` of both sides (an empty hypothesis is scored
    as "<empty>")."""
    references = [MambaASRProcessor.normalize_text(r) for r in references]
    hypotheses = [MambaASRProcessor.normalize_text(h) or "<empty>" for h in hypotheses]
    return {"wer": 100 * error_rate("wer", hypotheses, references),
            "cer": 100 * error_rate("cer", hypotheses, references)}


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
    """`README.md` beside the checkpoint: what was trained on what (the embedded corpus, or `result["dataset"]`, the
    user's data), and the measured error rates."""
    training = ", ".join(result.get("training_engines") or ["espeak-ng"])
    heldout = ", ".join(result.get("heldout_engines") or [])
    kind = result.get("kind", "digits")
    user_data = result.get("dataset")
    num_train = result.get("num_train", "?")
    ctc = f", joint CTC/decoder training with CTC weight {result['ctc_loss_weight']}" if result.get("ctc_loss_weight") \
        else ""
    if result.get("ctc_decoding_weight"):
        ctc += f", joint CTC/attention decoding with CTC weight {result['ctc_decoding_weight']}"
    if user_data:
        trained_on = f"on {user_data} ({'streamed' if num_train is None else num_train} training utterances)."
    else:
        engines = f"Training engines: {training}."
        if heldout:
            engines += (f" Held-out engines: {heldout}, never heard in training (the `{HELDOUT_SPLIT}` rows measure "
                        "how the model generalises to an unseen synthesiser).")
        trained_on = (f"on the embedded `{kind}` corpus of mamba-zoo ({num_train} training utterances, {training} "
                      f"voices). Test voices are never heard in training. {engines}")
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
        f"{result['speech_input']} input{ctc}) trained with `training/train_decoder_asr.py` {trained_on}",
        "",
        "| split | WER | CER |",
        "|---|---|---|",
    ]
    for role in ("test", "validation"):
        if f"{role}_wer" in result:
            name = result.get("split_names", {}).get(role, role) if user_data else f"{role} (held-out voices)"
            lines.append(f"| {name} | {result[f'{role}_wer']:.2f}% | {result[f'{role}_cer']:.2f}% |")
    if "heldout_engine_wer" in result:
        lines.append(f"| {HELDOUT_SPLIT}{f' ({heldout}: never heard in training)' if heldout else ''} | "
                     f"{result['heldout_engine_wer']:.2f}% | "
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
    ctc_loss_weight: float = field(default=0.3, metadata={
        "help": "joint CTC/decoder training: weight of a CTC loss on the speech-prefix states (0: none). 0.3 took test "
                "WER from 75.8 to 22.5 percent on the default corpus (model card)"})
    ctc_upsample: int = field(default=2, metadata={"help": "CTC frames per speech-prefix state"})
    ctc_decoding_weight: float = field(default=0.5, metadata={
        "help": "joint CTC/attention decoding: weight of the CTC head's prefix score in generate() and the pipeline "
                "(saved in the config; 0: the decoder alone; ignored without a CTC head). 0.5 with 4 beams took test "
                "WER from 24.6 to 11.4 percent on the default run (model card)"})


@dataclass
class DataArguments(TranscribedAudioDatasetArguments):
    """Where the data comes from (`TranscribedAudioDatasetArguments`: --dataset_name / --train_dir / --dataset_path,
    --streaming, the split names and sample limits, the audio and text columns; none given = the embedded corpus
    below), and the recipe's data options."""

    unit_fit_samples: Optional[int] = field(default=None, metadata={
        "help": "--speech_input units: fit the k-means units on the first N training clips (decoded for the fit "
                "only). Default: all of map-style data, 2000 of a stream"})
    kind: str = field(default="digits", metadata={"choices": ["digits", "sentences"],
                                                  "help": "embedded corpus (used when no data flag is given): digit "
                                                          "strings or grammar sentences"})
    num_train: int = field(default=2000, metadata={"help": "training utterances of the embedded corpus"})
    num_heldout: Optional[int] = field(default=None, metadata={
        "help": "utterances of the heldout_engine split (engines never heard in training; default: as num_eval)"})
    num_eval: int = field(default=200, metadata={
        "help": "validation and test utterances (each) of the embedded corpus"})
    engines: str = field(default="espeak-ng:3,festival:1,pico:1", metadata={
        "help": "training engines, comma-separated (espeak-ng, festival, sam, pico), optionally with shares: "
                "espeak-ng:3,festival:1,pico:1 (python -m mamba_zoo.corpora engines lists them; Pico in the default "
                "cut held-out SAM WER from 72.6 to 53.0 percent, one seed)"})
    heldout_engines: str = field(default="sam", metadata={
        "help": "engines never heard in training, decoded after training as the heldout_engine split ('' for none)"})


@dataclass
class RunArguments:
    num_beams: int = field(default=4, metadata={
        "help": "beam size of the test-set decoding (1: greedy); saved as the checkpoint's generation default"})
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


def build_processor(model_args: ModelArguments, data: ASRData, seed: int) -> MambaASRProcessor:
    """A new processor for `data`: the character tokenizer (`transcript_characters`: the default characters plus the
    training transcripts' others) and, with `--speech_input units`, k-means units fitted on the training clips (the
    first `data.unit_fit_samples`; all of map-style data, 2000 of a stream, by default)."""
    characters = transcript_characters(data.train, data.text_column, data.vocabulary_samples)
    if model_args.speech_input == "features":
        return MambaASRProcessor.from_scratch(characters=characters, speech_input="features")
    limit = data.unit_fit_samples if data.unit_fit_samples is not None else (2000 if data_loading.is_stream(data.train) else None)
    clips = decode_clips(data.train, data.audio_column, limit)
    processor = MambaASRProcessor.from_scratch(characters=characters, num_units=model_args.num_units,
                                               speech_input="features")
    return processor.fit_unit_tokenizer(clips, model_args.num_units, seed=seed)


_PROCESSORS = {}  # the ablation builds these once: key -> (the training split, processor, encoded training split)


def ablation_arguments(training_args, model_args: ModelArguments):
    """`training_args` for one ablation run: its Trainer writes to `OUTPUT_DIR/runs/<mixer>-<prefix>`, never pushed
    (ablation runs save nothing but the table)."""
    run = copy.copy(training_args)
    name = f"{model_args.mixer_type}-{model_args.speech_prefix}"
    run.output_dir = str(Path(training_args.output_dir) / "runs" / name)
    run.push_to_hub = False
    return run


def train_one(model_args: ModelArguments, training_args, data: ASRData, num_beams: int = 1,
              max_train_minutes: Optional[float] = None, save: bool = True, corpus_info: Optional[dict] = None) -> dict:
    """Train one configuration (`model_args.speech_prefix` x `model_args.mixer_type`) on `data.train` (prepared on the
    fly) and decode the evaluation split (test, else validation) and the `heldout_engine` split, if `data` has them,
    the same way; with `save`, save model + processor + results.json + a model card to `training_args.output_dir`
    (and push model + processor with `--push_to_hub`). `corpus_info` (kind, training / held-out engines, or the
    user's dataset) is recorded in the result."""
    from transformers import Trainer, set_seed

    set_seed(training_args.seed)
    started = time.time()
    key = (model_args.speech_input, model_args.num_units, training_args.seed)
    if key not in _PROCESSORS or _PROCESSORS[key][0] is not data.train:  # the ablation's runs share them
        processor = build_processor(model_args, data, training_args.seed)
        _PROCESSORS[key] = (data.train, processor,
                            training_items(processor, data.train, data.audio_column, data.text_column))
    processor, train_set = _PROCESSORS[key][1:]
    num_train = None if data_loading.is_stream(data.train) else len(train_set)
    prep_seconds = time.time() - started
    print(f"processor built in {prep_seconds:.1f}s; {num_train if num_train is not None else 'streamed'} training "
          "utterances encoded", flush=True)
    speech_prefix, mixer_type = model_args.speech_prefix, model_args.mixer_type
    config = MambaASRConfig(
        hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_layers, expand=model_args.expand,
        state_size=model_args.state_size, mixer_type=mixer_type, speech_prefix=speech_prefix,
        mamba2_head_dim=model_args.mamba2_head_dim, subsampling_conv_channels=model_args.subsampling_channels,
        num_subsampling_layers=model_args.num_subsampling_layers, speech_mask_prob=model_args.speech_mask_prob,
        ctc_loss_weight=model_args.ctc_loss_weight, ctc_upsample=model_args.ctc_upsample,
        ctc_decoding_weight=model_args.ctc_decoding_weight if model_args.ctc_loss_weight > 0 else 0.0,
        **processor.model_config_kwargs(),
    )
    model = MambaDecoderOnlyASR(config)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"[{speech_prefix}/{mixer_type}] {num_params / 1e6:.2f}M parameters", flush=True)
    budget = TrainingBudgetCallback(max_train_minutes)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, data_collator=collate,
                      processing_class=processor if save else None, callbacks=[budget])
    train_started = time.time()
    trainer.train()
    train_seconds = time.time() - train_started
    eval_started = time.time()
    scores = {}
    role = next((r for r in ("test", "validation") if r in data.evaluation), None)
    if role is not None:
        eval_audio, eval_text = data.evaluation[role][0], data.evaluation[role][1]
        hypotheses = transcribe(model, processor, eval_audio, num_beams=num_beams)
        rates = error_rates(eval_text, hypotheses)
        scores = {f"{role}_wer": round(rates["wer"], 2), f"{role}_cer": round(rates["cer"], 2),
                  "examples": [{"reference": r, "hypothesis": h} for r, h in list(zip(eval_text, hypotheses))[:5]],
                  f"{role}_utterances": len(eval_audio)}
    else:
        print("no test or validation split: nothing decoded after training", flush=True)
    heldout = {}
    if HELDOUT_SPLIT in data.evaluation:  # engines never heard in training, decoded exactly as test
        heldout_audio, heldout_text, heldout_voices = (tuple(data.evaluation[HELDOUT_SPLIT]) + (None,))[:3]
        heldout_hypotheses = transcribe(model, processor, heldout_audio, num_beams=num_beams)
        heldout = {**heldout_engine_rates(heldout_text, heldout_hypotheses, heldout_voices),
                   f"{HELDOUT_SPLIT}_utterances": len(heldout_audio),
                   f"{HELDOUT_SPLIT}_examples": [{"reference": r, "hypothesis": h}
                                                 for r, h in list(zip(heldout_text, heldout_hypotheses))[:5]]}
    result = {
        "speech_prefix": speech_prefix, "mixer_type": mixer_type, "speech_input": model_args.speech_input,
        "ctc_loss_weight": model_args.ctc_loss_weight, "ctc_decoding_weight": config.ctc_decoding_weight,
        "num_beams": num_beams, "parameters_m": round(num_params / 1e6, 3),
        "steps": trainer.state.global_step,
        "train_minutes": round(train_seconds / 60, 2), **budget.summary(),
        "prep_seconds": round(prep_seconds, 1), "eval_seconds": round(time.time() - eval_started, 1),
        **scores, "num_train": num_train, **(corpus_info or {}), **heldout,
    }
    if trainer.is_world_process_zero():
        print(json.dumps(result), flush=True)
        if role is not None:
            print(f"{role}: WER {result[f'{role}_wer']:.2f}%  CER {result[f'{role}_cer']:.2f}%", flush=True)
        if heldout:
            per_engine = "".join(f"  {k[len('heldout_engine_wer_'):]} WER {v:.2f}%" for k, v in result.items()
                                 if k.startswith("heldout_engine_wer_"))
            engines = ", ".join(result.get("heldout_engines") or [])
            print(f"{HELDOUT_SPLIT}{f' ({engines}, never heard in training)' if engines else ''}: "
                  f"WER {result['heldout_engine_wer']:.2f}%  CER {result['heldout_engine_cer']:.2f}%{per_engine}",
                  flush=True)
    if save:
        output_dir = Path(training_args.output_dir)
        if trainer.is_world_process_zero():
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "results.json").write_text(json.dumps(result, indent=2))
        model.generation_config.num_beams = num_beams  # generate() and the pipeline decode as measured here
        trainer.save_model(str(output_dir))  # model + processor on the main process; pushes with --push_to_hub
        if trainer.is_world_process_zero():  # after save_model: a push writes the Trainer's own draft card there
            write_model_card(output_dir, result)
    return result


def load_data(data_args: DataArguments, seed: int):
    """`(ASRData, corpus_info)`: the user's data (`data_loading.load_splits`) or, with no source flag, the embedded
    corpus through the same path; the training split undecoded (filtered by `--max_duration_in_seconds`), the
    evaluation splits decoded into memory (`--max_eval_samples` bounds them). `corpus_info` (recorded in the results):
    the embedded corpus's kind and engines, or the user's `dataset`, and `split_names`: role (`train`, `test` or else
    `validation`, `heldout_engine`) -> the data's split name, for the roles the data has."""
    source = data_loading.describe_source(data_args)
    engines, engine_weights = parse_engines(data_args.engines)
    heldout_engines = parse_engines(data_args.heldout_engines)[0]

    def embedded():
        from mamba_zoo.corpora import load_transcribed

        return load_transcribed(kind=data_args.kind, num_train=data_args.num_train, num_eval=data_args.num_eval,
                                seed=seed, engines=tuple(engines), engine_weights=engine_weights,
                                heldout_engines=tuple(heldout_engines), progress=False,
                                num_heldout=data_args.num_heldout if heldout_engines else None)

    splits = data_loading.load_splits(data_args, embedded=embedded)
    names = {"train": data_args.train_split_name, "validation": data_args.eval_split_name,
             "test": data_args.test_split_name, HELDOUT_SPLIT: HELDOUT_SPLIT}
    used = {role: splits[name] for role, name in names.items() if name in splits}
    if "test" in used:  # decoded after training: test, else validation (this recipe evaluates once, at the end)
        used.pop("validation", None)
    audio_column, text_column = data_args.audio_column_name, data_args.text_column_name
    for split in used.values():
        data_loading.require_column(split, audio_column, "--audio_column_name")
        data_loading.require_column(split, text_column, "--text_column_name")
    data = ASRData(
        train=data_loading.drop_long_clips(used["train"], audio_column, data_args.max_duration_in_seconds),
        evaluation={role: data_loading.decode_split(split, SAMPLING_RATE, audio_column, text_column) for role, split in used.items()
                    if role != "train"},
        audio_column=audio_column, text_column=text_column, vocabulary_samples=data_args.vocabulary_samples,
        unit_fit_samples=data_args.unit_fit_samples)
    if source is None:
        corpus_info = {"kind": data_args.kind, "training_engines": list(engines),
                       "heldout_engines": list(heldout_engines)}
        if engine_weights is not None:
            corpus_info["engine_weights"] = list(engine_weights)
    else:
        corpus_info = {"dataset": source}
    corpus_info["split_names"] = {role: names[role] for role in used}
    if data_args.max_duration_in_seconds is not None:
        corpus_info["max_duration_in_seconds"] = data_args.max_duration_in_seconds
        if not data_loading.is_stream(used["train"]):
            corpus_info["num_train_too_long"] = len(used["train"]) - len(data.train)
    return data, corpus_info


def main(argv=None):
    model_args, data_args, run_args, training_args = parse_args(argv)
    source = data_loading.describe_source(data_args)  # None: the embedded corpus (and a clear error for two sources)
    data_loading.check_streaming_training(data_args, training_args)
    if run_args.threads:
        torch.set_num_threads(run_args.threads)

    started = time.time()
    data, corpus_info = load_data(data_args, training_args.seed)
    counts = [f"train {'streamed' if data_loading.is_stream(data.train) else len(data.train)}"] + [
        f"{corpus_info['split_names'][role]} {len(split[0])}" for role, split in data.evaluation.items()]
    if source is None:
        about = f"training engines {', '.join(corpus_info['training_engines'])}" + (
            f"; held out {', '.join(corpus_info['heldout_engines'])}" if corpus_info["heldout_engines"] else "")
    else:
        about = source
    print(f"data loaded in {time.time() - started:.1f}s: {', '.join(counts)}; {about}", flush=True)
    if not run_args.ablation:
        return train_one(model_args, training_args, data, run_args.num_beams, run_args.max_train_minutes,
                         corpus_info=corpus_info)
    rows = []
    for mixer_type in run_args.ablation_mixers.split(","):
        for speech_prefix in run_args.ablation_prefixes.split(","):
            run_model_args = replace(model_args, mixer_type=mixer_type, speech_prefix=speech_prefix)
            rows.append(train_one(run_model_args, ablation_arguments(training_args, run_model_args), data,
                                  run_args.num_beams, run_args.max_train_minutes, save=False, corpus_info=corpus_info))
    if training_args.process_index == 0:
        heldout = HELDOUT_SPLIT in data.evaluation
        role = next((r for r in ("test", "validation") if f"{r}_wer" in rows[0]), None)
        print(f"\n| mixer | speech prefixing | params (M) | steps | train min | {role} WER % | {role} CER % |"
              + (f" {HELDOUT_SPLIT} WER % |" if heldout else ""))
        print("|---|---|---|---|---|---|---|" + ("---|" if heldout else ""))
        for row in rows:
            print(f"| {row['mixer_type']} | {row['speech_prefix']} | {row['parameters_m']} | {row['steps']} | "
                  f"{row['train_minutes']} | {row.get(f'{role}_wer', '')} | {row.get(f'{role}_cer', '')} |"
                  + (f" {row['heldout_engine_wer']} |" if heldout else ""))
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "ablation.json").write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
    end_distributed_run()  # under torchrun on CPU: leave without gloo's exit-time abort
