#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Train MambaForCTC with `Trainer` on transcribed speech and save a pipeline-ready checkpoint.

Defaults: the embedded digit-string corpus (`mamba_zoo.corpora.load_transcribed("digits")`: espeak-ng, Festival and
Pico voices, split by voice so test voices are never heard in training, plus a `heldout_engine` split of 600 utterances
spoken by SAM, an engine never heard in training), a 0.4M-parameter bidirectional Mamba encoder (4 blocks, width 96), greedy CTC, and
`outputs/mamba-ctc-digits/` with model, processor and a model card holding the measured WER/CER:

    python training/train_ctc.py
    python training/train_ctc.py --kind sentences --output_dir outputs/mamba-ctc-sentences --num_train_epochs 30
    python training/train_ctc.py --lora --init_from outputs/mamba-ctc-digits --output_dir outputs/mamba-ctc-lora
    python training/train_ctc.py --per_device_train_batch_size 32 --learning_rate 1e-3 --max_steps 500
    python training/train_ctc.py --engines espeak-ng --heldout_engines festival,sam --waveform_augment_copies 2
    python training/train_ctc.py args.json                                  # every flag below as one JSON object
    torchrun --nproc_per_node 2 training/train_ctc.py --output_dir outputs/mamba-ctc-ddp ...

Flags: transformers' `TrainingArguments` (`--output_dir`, `--num_train_epochs`, `--max_steps`, `--learning_rate`,
`--per_device_train_batch_size`, `--warmup_steps`, `--weight_decay`, `--gradient_accumulation_steps`, `--seed`,
`--use_cpu`, `--bf16`, `--push_to_hub`, ...) plus the `ModelArguments`, `DataArguments` and `RunArguments` below
(HfArgumentParser, as in transformers' example scripts), so the script runs unchanged under `torchrun` /
`accelerate launch`. Where this script's defaults differ from `TrainingArguments`' own, a flag you do not pass takes
the script's value (`TRAINING_DEFAULTS`):

    --output_dir outputs/mamba-ctc-digits  --num_train_epochs 15  --per_device_train_batch_size 16
    --per_device_eval_batch_size 32  --learning_rate 3e-3  --lr_scheduler_type cosine  --warmup_steps 60
    --weight_decay 0.01  --max_grad_norm 1.0  --eval_strategy epoch  --save_strategy no  --seed 0
    --remove_unused_columns false  --disable_tqdm true
    --logging_steps a quarter epoch, max(1, steps_per_epoch // 4)   (the -1 default, resolved once the corpus is loaded)

The device is `TrainingArguments`' choice (CPU on a machine without accelerator; `--use_cpu` forces it). The Trainer's
own files (checkpoints, only with a `--save_strategy`) go to `OUTPUT_DIR/trainer`; model, processor, model card and
`eval_results.json` to `OUTPUT_DIR` (written by the main process only). `--num_threads` (default 1: torch/numba
threads per process) is this script's own: leave it at 1 under a launcher, which runs one process per core / device.
The recipe is fixed-length (15 epochs = 1875 steps on the default corpus); `--max_train_minutes` (opt-in) stops
training at a wall-clock budget and records it in `eval_results.json` (`stopped_by_time_budget`). FSDP is not supported
(the model is saved with `save_pretrained`).

Generalisation: `--engines` (default "espeak-ng:3,festival:1,pico:1", the shares of the clips; "espeak-ng,festival" for equal shares) picks the training
engines, `--heldout_engines` (default "sam"; "" for none) those of the `heldout_engine` split, which is decoded like
test after training (`heldout_engine_wer`, `heldout_engine_cer` and, with several engines, `heldout_engine_wer_<engine>`
in `eval_results.json`, the printed summary and the model card). `--waveform_augment_copies N` (default 0) precomputes N
seeded augmented versions of every training utterance (`mamba_zoo.corpora.voice_augmentation.WaveformAugmenter`, same length); each
training item is drawn among the original and its copies.

Your own data (`training/data_loading.py`; transformers' example-script flag names): any split with an audio column
(`--audio_column_name`, default `audio`) and a transcript column (`--text_column_name`, default `text`); audio is
decoded with soundfile (no torchcodec needed) and resampled to 16 kHz, the rest of the recipe is unchanged:

    python training/train_ctc.py --dataset_name org/speech --text_column_name sentence
    python training/train_ctc.py --train_dir clips/train --eval_dir clips/dev  # audio + metadata.csv (file_name,text)
    python training/train_ctc.py --dataset_path my_corpus                      # a DatasetDict saved with save_to_disk
    python training/train_ctc.py --dataset_name org/speech --streaming --max_steps 2000

The training split is read on the fly (`data_loading.on_the_fly`): each item's audio is decoded when the DataLoader
asks for it and featurised per batch by the collator, so memory does not grow with the training set. The evaluation
splits (`--eval_split_name`, `--test_split_name`, and the embedded corpus's `heldout_engine`) are decoded into memory
once, to be transcribed in length-sorted batches: bound them with `--max_eval_samples`. Absent evaluation splits are
skipped (no validation split: no evaluation during training). The vocabulary is built from the training transcripts
(only that column is read; with `--streaming`, the first `--vocabulary_samples` transcripts of the stream: characters
seen only later map to `<unk>`; or take the checkpoint's with `--init_from`). `--max_duration_in_seconds S` drops
longer training clips before training (as transformers' run_speech_recognition_ctc.py does): for map-style data a
`datasets.Dataset.filter` pass that reads each clip's file header (soundfile.info; an array's length for in-memory
audio), nothing decoded or kept; for a stream the same test, lazily, as rows arrive. `--streaming` training needs
`--max_steps`; `--waveform_augment_copies` (which holds every augmented training clip in memory) needs map-style data.

Then: `pipeline("automatic-speech-recognition", model="outputs/mamba-ctc-digits", trust_remote_code=True)`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mamba_zoo  # noqa: E402  (registers the Auto* classes)
from mamba_zoo import MambaCTCConfig, MambaCTCProcessor, MambaForCTC, normalize_transcript  # noqa: E402
from common import (  # noqa: E402
    TrainingBudgetCallback,
    augmented_copies,
    end_distributed_run,
    max_train_minutes_field,
    parse_engines,
    parse_script_args,
)
from mamba_zoo.corpora import HELDOUT_SPLIT  # noqa: E402  (the split spoken only by engines never heard in training)
import data_loading  # noqa: E402
from data_loading import TranscribedAudioDatasetArguments  # noqa: E402


# ---------------------------------------------------------------------------------------------------------- data


SAMPLING_RATE = 16000  # the feature extractor's rate: every clip is decoded (and resampled) to it


def draw_view(num_views: int) -> int:
    """Which version of a training clip an item uses when it has `num_views` augmented copies: 0 = the original, k =
    copy k. One draw per item from torch's generator (which the Trainer seeds): the same seed, the same views."""
    return int(torch.randint(0, num_views + 1, ()))


class AudioTextDataset(torch.utils.data.Dataset):
    """In-memory list of `{"audio": float32 array at 16 kHz, "text": str}` (the evaluation splits, decoded once by
    `decode_to_memory`; training data is never held like this, see `training_items`); `voice` (optional) names each
    utterance's voice. `views`: augmented versions of the same utterances, a list of copies each as long as `audio`
    (same lengths); each item is then drawn among the original and its copies (`draw_view`)."""

    def __init__(self, audio: list[np.ndarray], text: list[str], voice: Optional[list[str]] = None,
                 views: Optional[list[list[np.ndarray]]] = None):
        self.audio, self.text, self.voice, self.views = audio, text, voice, views

    def __len__(self):
        return len(self.audio)

    def __getitem__(self, index):
        audio = self.audio[index]
        if self.views:
            view = draw_view(len(self.views))
            audio = audio if view == 0 else self.views[view - 1][index]
        return {"audio": audio, "text": self.text[index]}


def decode_to_memory(split, audio_column: str = "audio", text_column: str = "text") -> AudioTextDataset:
    """An evaluation split (map-style, or a stream read once) -> `AudioTextDataset`, every clip decoded to 16 kHz
    (`data_loading.decode_split`)."""
    return AudioTextDataset(*data_loading.decode_split(split, SAMPLING_RATE, audio_column, text_column))


def training_items(split, audio_column: str, text_column: str, views=None):
    """The training split for the Trainer, prepared on the fly (`data_loading.on_the_fly`): each item's clip is decoded
    when the DataLoader asks for it, `{"audio", "text"}` (the collator featurises per batch). With `views` (augmented
    copies of every clip, map-style data only) each item first draws its version (`draw_view`), as
    `AudioTextDataset` does."""
    split = split.select_columns([audio_column, text_column])

    def prepare(row, index):
        text = str(row[text_column])
        if views:
            view = draw_view(len(views))
            if view:
                return {"audio": views[view - 1][index], "text": text}
        return {"audio": data_loading.decode_audio(row[audio_column], SAMPLING_RATE, audio_column, index),
                "text": text}

    return data_loading.on_the_fly(split, prepare)


@dataclass
class DataCollatorCTCWithPadding:
    """Featurize raw audio and tokenize transcripts per batch, padding both to the batch's longest (dynamic
    padding): `input_features` `(batch, frames, 80)`, `attention_mask` `(batch, frames)`, `labels` `(batch, chars)`
    padded with -100."""

    processor: MambaCTCProcessor
    sampling_rate: int = 16000
    concat_probability: float = 0.0
    seed: int = 0

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        audio, text = [e["audio"] for e in examples], [e["text"] for e in examples]
        if self.concat_probability > 0 and len(examples) > 1:
            # teach utterance boundaries: join an utterance with the next one of the batch after 0.1-0.6 s of
            # silence, transcript "a b" (the word delimiter between them)
            for i in np.flatnonzero(self.rng.random(len(examples)) < self.concat_probability):
                j = (i + 1) % len(examples)
                gap = np.zeros(int(self.rng.uniform(0.1, 0.6) * self.sampling_rate), dtype=np.float32)
                audio[i] = np.concatenate([examples[i]["audio"], gap, examples[j]["audio"]])
                text[i] = f"{examples[i]['text']} {examples[j]['text']}"
        batch = self.processor(audio=audio, text=text, sampling_rate=self.sampling_rate, return_tensors="pt")
        return dict(batch)


# ---------------------------------------------------------------------------------------------------------- metrics


_METRICS = {}  # name -> the loaded `evaluate` module (loaded once)


def error_rate(name: str, predictions: list[str], references: list[str]) -> float:
    """`mamba_zoo.metrics.load_metric(name)` ("wer" / "cer": offline `evaluate` modules, jiwer inside) on the texts as
    given. Kept in memory: no cache files, so the processes of a launched run do not share one."""
    from mamba_zoo.metrics import load_metric

    if name not in _METRICS:
        _METRICS[name] = load_metric(name, keep_in_memory=True)
    return float(_METRICS[name].compute(predictions=list(predictions), references=list(references)))


def word_and_char_error_rates(predictions: list[str], references: list[str]) -> dict[str, float]:
    """WER and CER (fractions) after `normalize_transcript` of both sides."""
    references = [normalize_transcript(r) for r in references]
    predictions = [normalize_transcript(p) for p in predictions]
    return {"wer": error_rate("wer", predictions, references), "cer": error_rate("cer", predictions, references)}


def heldout_engine_rates(predictions: list[str], dataset: AudioTextDataset) -> dict[str, float]:
    """`heldout_engine_wer` / `heldout_engine_cer` over the held-out-engine split and, when it has several engines,
    `heldout_engine_wer_<engine>` for each (fractions, like the test split's)."""
    from mamba_zoo.corpora import engine_of

    rates = word_and_char_error_rates(predictions, dataset.text)
    result = {"heldout_engine_wer": rates["wer"], "heldout_engine_cer": rates["cer"]}
    engines = [engine_of(v) for v in dataset.voice] if dataset.voice is not None else []
    if len(set(engines)) > 1:
        for engine in sorted(set(engines)):
            members = [i for i, e in enumerate(engines) if e == engine]
            result[f"heldout_engine_wer_{engine}"] = word_and_char_error_rates(
                [predictions[i] for i in members], [dataset.text[i] for i in members])["wer"]
    return result


def make_compute_metrics(processor: MambaCTCProcessor):
    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted_ids = np.argmax(logits, axis=-1)
        labels = prediction.label_ids.copy()
        labels[labels == -100] = processor.tokenizer.pad_token_id
        predictions = processor.batch_decode(predicted_ids)
        references = processor.batch_decode(labels, group_tokens=False)
        return word_and_char_error_rates(predictions, references)

    return compute_metrics


@torch.no_grad()
def transcribe(model, processor, dataset: AudioTextDataset, batch_size: int = 32, beam_decoder=None) -> list[str]:
    """Greedy (or beam, with `beam_decoder`) transcription of every utterance of `dataset`."""
    model.eval()
    texts = []
    order = np.argsort([len(a) for a in dataset.audio])  # length-sorted batches: little padding
    by_index = {}
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        inputs = processor(audio=[dataset.audio[i] for i in indices], sampling_rate=16000, return_tensors="pt")
        logits = model(**inputs).logits
        if beam_decoder is None:
            decoded = processor.batch_decode(logits.argmax(-1))
        else:
            lengths = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
            decoded = processor.decode_beams(logits, lengths, decoder=beam_decoder)
        by_index.update(zip(indices.tolist(), decoded))
    texts = [by_index[i] for i in range(len(dataset))]
    return texts


def long_form_check(output_dir: str, dataset: AudioTextDataset, seconds: float = 60.0, chunk_length_s: float = 10.0,
                    stride_length_s: float = 2.0) -> dict:
    """Concatenate held-out utterances (0.3 s silence between them) to ~`seconds`, transcribe with the ASR pipeline
    unchunked and chunked, and report the WER of each against the reference and between the two."""
    from transformers import pipeline

    from mamba_zoo import MambaASRPipeline

    asr = pipeline("automatic-speech-recognition", model=output_dir, pipeline_class=MambaASRPipeline)
    gap = np.zeros(int(0.3 * 16000), dtype=np.float32)
    pieces, words, total = [], [], 0
    for audio, text in zip(dataset.audio, dataset.text):
        if total >= seconds * 16000:
            break
        pieces += [audio / max(np.abs(audio).max(), 1e-6) * 0.5, gap]
        words.append(normalize_transcript(text))
        total += len(audio) + len(gap)
    long_audio = np.concatenate(pieces)
    reference = " ".join(words)
    start = time.perf_counter()
    unchunked = asr({"raw": long_audio, "sampling_rate": 16000})["text"]
    unchunked_s = time.perf_counter() - start
    start = time.perf_counter()
    chunked = asr({"raw": long_audio, "sampling_rate": 16000}, chunk_length_s=chunk_length_s,
                  stride_length_s=stride_length_s, return_timestamps="word")
    chunked_s = time.perf_counter() - start
    unchunked_text, chunked_text = normalize_transcript(unchunked), normalize_transcript(chunked["text"])

    return {
        "audio_seconds": round(len(long_audio) / 16000, 1),
        "chunk_length_s": chunk_length_s,
        "stride_length_s": stride_length_s,
        "wer_unchunked_vs_reference": error_rate("wer", [unchunked_text], [reference]),
        "wer_chunked_vs_reference": error_rate("wer", [chunked_text], [reference]),
        "wer_chunked_vs_unchunked": error_rate("wer", [chunked_text], [unchunked_text or "<empty>"]),
        "cer_chunked_vs_unchunked": error_rate("cer", [chunked_text], [unchunked_text or "<empty>"]),
        "identical": unchunked == chunked["text"],
        "word_timestamps_first": chunked.get("chunks", [])[:3],
        "unchunked_seconds": round(unchunked_s, 2),
        "chunked_seconds": round(chunked_s, 2),
    }


# ---------------------------------------------------------------------------------------------------------- card


def engines_sentence(results: dict) -> str:
    """Which engines trained and which were held out, for the model card."""
    training = ", ".join(results.get("training_engines") or ["espeak-ng"])
    heldout = ", ".join(results.get("heldout_engines") or [])
    sentence = f"Training engines: {training}."
    heard = sorted(set(results.get("heldout_engines") or []) & set(results.get("training_engines") or []))
    if heard:  # --eval_only on a corpus whose held-out engines this checkpoint was trained on
        sentence += (f" The `{HELDOUT_SPLIT}` rows ({heldout}) include engines heard in training ({', '.join(heard)}):"
                     " they do not measure generalisation to an unseen synthesiser.")
    elif heldout:
        sentence += (f" Held-out engines: {heldout}, never heard in training (the `{HELDOUT_SPLIT}` rows measure "
                     "how the model generalises to an unseen synthesiser).")
    return sentence


def write_model_card(output_dir: str, kind: str, results: dict) -> None:
    """`README.md` beside the checkpoint: what was trained on what (the embedded corpus, or `results["dataset"]`,
    the user's data), and the measured error rates (model-index: test, else validation)."""
    scored = results.get("test") or results.get("validation")
    user_data = results.get("dataset")
    engines = ", ".join(results.get("training_engines") or ["espeak-ng"])
    if user_data:
        dataset = f"{{name: {user_data}, type: custom}}"
        num_train = results["num_train"] if results.get("num_train") is not None else "streamed"
        trained_on = f"on {user_data} ({num_train} training utterances)."
    else:
        dataset = f"{{name: mamba-zoo transcribed-{kind} ({engines}, held-out voices), type: synthetic}}"
        trained_on = (f"on the embedded `{kind}` corpus of mamba-zoo ({results['num_train']} training utterances, "
                      f"{engines} voices). Test voices are never heard in training. {engines_sentence(results)}")
    metrics = [] if scored is None else [
        "model-index:",
        f"- name: {Path(output_dir).name}",
        "  results:",
        "  - task: {type: automatic-speech-recognition}",
        f"    dataset: {dataset}",
        "    metrics:",
        f"    - {{type: wer, value: {100 * scored['wer']:.2f}}}",
        f"    - {{type: cer, value: {100 * scored['cer']:.2f}}}",
    ]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: automatic-speech-recognition",
        "tags: [mamba, ctc, speech, mamba-zoo]",
        "license: apache-2.0",
        *metrics,
        "---",
        "",
        f"# {Path(output_dir).name}",
        "",
        f"MambaForCTC (bidirectional Mamba encoder, CTC) trained with `training/train_ctc.py` {trained_on}",
        "",
        "| split | WER | CER |",
        "|---|---|---|",
    ]
    for split in ("validation", "test"):
        if split in results:
            name = results.get("split_names", {}).get(split, split) if user_data else f"{split} (held-out voices)"
            lines.append(f"| {name} | {100 * results[split]['wer']:.2f}% | {100 * results[split]['cer']:.2f}% |")
    if "heldout_engine_wer" in results:
        heldout = ", ".join(results.get("heldout_engines") or [])
        heldout += "" if set(results.get("heldout_engines") or []) & set(results.get("training_engines") or []) \
            else ": never heard in training"
        lines.append(f"| {HELDOUT_SPLIT}{'' if user_data else f' ({heldout})'} | "
                     f"{100 * results['heldout_engine_wer']:.2f}% | {100 * results['heldout_engine_cer']:.2f}% |")
        for key in sorted(k for k in results if k.startswith("heldout_engine_wer_")):
            lines.append(f"| {HELDOUT_SPLIT}, {key[len('heldout_engine_wer_'):]} only | {100 * results[key]:.2f}% | |")
    if results.get("waveform_augment_copies"):
        from mamba_zoo.corpora.voice_augmentation import WaveformAugmenter

        augmenter = WaveformAugmenter(p_resynthesis=results.get("waveform_augment_resynthesis", 0.0))

        lines += ["", f"Voice and channel augmentation: {results['waveform_augment_copies']} seeded copies of every "
                      f"training utterance ({augmenter.describe()}); each training item is drawn among the "
                      "original and its copies."]
    lines += [
        "",
        f"Parameters: {results['parameters'] / 1e6:.2f}M. Training: {results['steps']} steps"
        f"{' (cut short by the time budget)' if results.get('stopped_by_time_budget') else ''}, "
        f"{results['train_seconds'] / 60:.1f} min wall, {results['train_cpu_seconds'] / 60:.1f} min CPU "
        f"({results['device']}); whole script {results['total_seconds'] / 60:.1f} min wall.",
        "",
        "```python",
        "import mamba_zoo  # or trust_remote_code=True without mamba-zoo installed",
        "from transformers import pipeline",
        f"asr = pipeline('automatic-speech-recognition', model='{output_dir}', trust_remote_code=True)",
        "asr('audio.wav', chunk_length_s=10, stride_length_s=2, return_timestamps='word')",
        "```",
    ]
    if "long_form" in results:
        lf = results["long_form"]
        lines += ["", f"Long-form ({lf['audio_seconds']} s concatenation): WER unchunked {100 * lf['wer_unchunked_vs_reference']:.2f}%, "
                  f"chunked ({lf['chunk_length_s']} s / {lf['stride_length_s']} s stride) "
                  f"{100 * lf['wer_chunked_vs_reference']:.2f}%, chunked vs unchunked {100 * lf['wer_chunked_vs_unchunked']:.2f}%."]
    Path(output_dir, "README.md").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------------------- main


@dataclass
class ModelArguments:
    hidden_size: int = field(default=96, metadata={"help": "encoder width"})
    num_hidden_layers: int = field(default=4, metadata={"help": "encoder blocks"})
    subsampling_conv_channels: int = field(default=32, metadata={"help": "channels of the conv subsampler"})
    block_type: str = field(default="mamba", metadata={"choices": ["mamba", "conmamba"], "help": "encoder block"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters (peft) on the mixers' projections"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (alpha = 2 x rank)"})
    init_from: Optional[str] = field(default=None, metadata={"help": "start from this checkpoint (model + processor)"})


@dataclass
class DataArguments(TranscribedAudioDatasetArguments):
    """Where the data comes from (`TranscribedAudioDatasetArguments`: --dataset_name / --train_dir / --dataset_path,
    --streaming, the split names and sample limits, the audio and text columns; none given = the embedded corpus
    below), and the recipe's data options."""

    kind: str = field(default="digits", metadata={"choices": ["digits", "sentences"],
                                                  "help": "embedded corpus (used when no data flag is given)"})
    num_train: int = field(default=2000, metadata={"help": "training utterances of the embedded corpus"})
    num_heldout: int = field(default=600, metadata={
        "help": "utterances of the heldout_engine split (engines never heard in training; default: 600, three times test, so the number that says whether the model generalises has less sampling noise)"})
    num_eval: int = field(default=200, metadata={
        "help": "validation and test utterances (each) of the embedded corpus"})
    concat_probability: float = field(default=0.3, metadata={
        "help": "join this fraction of training utterances with a batch neighbour (silence between, 'a b' transcript) "
                "so that the model learns word boundaries across pauses, as in long-form audio (trained without it, "
                "words merged across the gaps of a 60 s recording)"})
    engines: str = field(default="espeak-ng:3,festival:1,pico:1", metadata={
        "help": "training engines, comma-separated (espeak-ng, festival, sam, pico), optionally with shares: "
                "espeak-ng:3,festival:1,pico:1 (python -m mamba_zoo.corpora engines lists them; Pico in the "
                "default cut held-out SAM's WER by 7.5 points over espeak-ng:3,festival:1, two seeds)"})
    heldout_engines: str = field(default="sam", metadata={
        "help": "engines never heard in training, decoded after training as the heldout_engine split ('' for none)"})
    waveform_augment_copies: int = field(default=0, metadata={
        "help": "voice + channel augmentation (mamba_zoo.corpora.voice_augmentation): this many seeded augmented versions of every "
                "training utterance are computed before training (same length), and each training item is drawn "
                "among the original and its copies (0: none)"})
    waveform_augment_resynthesis: float = field(default=0.0, metadata={
        "help": "probability that an augmented copy also gets source-filter resynthesis (its voice source replaced: "
                "mamba_zoo.corpora.voice_augmentation.source_filter_resynthesis); 0: off"})


@dataclass
class RunArguments:
    max_train_minutes: Optional[float] = max_train_minutes_field()
    beam_width: int = field(default=0, metadata={"help": "also evaluate pyctcdecode beam search (if installed)"})
    skip_long_form: bool = field(default=False, metadata={"help": "skip the 60 s chunked-vs-unchunked check"})
    eval_only: bool = field(default=False, metadata={
        "help": "evaluate the checkpoint in --output_dir (keeping the training numbers recorded there)"})
    num_threads: int = field(default=1, metadata={
        "help": "torch/numba threads (0: torch's choice). 1 is the default: this model's ops are small, and on a busy "
                "2-core machine OpenMP threads that wait for each other made steps 20x slower. Leave it at 1 under "
                "a launcher (one process per core / device)"})


# Where this script's defaults differ from TrainingArguments' own; applied to every flag the user does not pass.
# logging_steps=-1: a quarter epoch, resolved in train_model once the corpus is loaded.
TRAINING_DEFAULTS = dict(
    output_dir="outputs/mamba-ctc-digits", num_train_epochs=15, per_device_train_batch_size=16,
    per_device_eval_batch_size=32, learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=60, weight_decay=0.01,
    max_grad_norm=1.0, eval_strategy="epoch", save_strategy="no", logging_steps=-1, report_to="none", seed=0,
    dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
)


def parse_args(argv=None):
    """`(model_args, data_args, run_args, training_args)` from `argv` (default: sys.argv[1:]) or one `.json` file."""
    from transformers import TrainingArguments

    return parse_script_args((ModelArguments, DataArguments, RunArguments, TrainingArguments), TRAINING_DEFAULTS,
                             argv, description=__doc__.split("\n\n")[0])


def process_cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): unlike wall time, it does not grow when other
    processes compete for the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_model(model_args: ModelArguments, data_args: DataArguments, run_args: RunArguments, training_args,
                train, validation: Optional[AudioTextDataset], transcripts=None):
    """Build (or load with --init_from) the model and processor, train with Trainer, save both to --output_dir (main
    process only); the Trainer's own files go to `OUTPUT_DIR/trainer`. `train`: the on-the-fly training items
    (`training_items`); `validation`: evaluated by the Trainer (None: no evaluation during training);
    `transcripts()`: the training transcripts the vocabulary is built from (not read with --init_from)."""
    from transformers import IntervalStrategy, Trainer

    if model_args.init_from:
        processor = MambaCTCProcessor.from_pretrained(model_args.init_from)
        model = MambaForCTC.from_pretrained(model_args.init_from)
    else:
        processor = MambaCTCProcessor.from_transcripts(transcripts())
        config = MambaCTCConfig(
            vocab_size=len(processor.tokenizer), pad_token_id=processor.tokenizer.pad_token_id,
            hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
            subsampling_conv_channels=model_args.subsampling_conv_channels, block_type=model_args.block_type,
            intermediate_size=4 * model_args.hidden_size, hidden_dropout=0.1, final_dropout=0.1,
            mask_time_prob=0.05, mask_time_length=5, mask_feature_prob=0.05, mask_feature_length=8, ctc_zero_infinity=True,
        )
        model = MambaForCTC(config)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters / 1e6:.2f}M parameters, vocabulary {len(processor.tokenizer)}", flush=True)

    if model_args.lora:
        from peft import LoraConfig, get_peft_model

        lora_config = LoraConfig(r=model_args.lora_r, lora_alpha=2 * model_args.lora_r, lora_dropout=0.0,
                                 target_modules=["in_proj", "out_proj", "x_proj"], modules_to_save=["lm_head"])
        model = get_peft_model(model, lora_config)
        model.print_trainable_parameters()

    output_dir = training_args.output_dir
    trainer_args = copy.copy(training_args)  # the caller's keep OUTPUT_DIR and the -1 logging default
    trainer_args.output_dir = os.path.join(output_dir, "trainer")
    if trainer_args.logging_steps < 0:
        if isinstance(train, torch.utils.data.IterableDataset):  # a stream: no epochs, a quarter of the steps
            trainer_args.logging_steps = max(1, training_args.max_steps // 4)
        else:
            steps_per_epoch = math.ceil(len(train) / (training_args.per_device_train_batch_size
                                                      * training_args.gradient_accumulation_steps))
            trainer_args.logging_steps = max(1, steps_per_epoch // 4)
    if validation is None and trainer_args.eval_strategy != IntervalStrategy.NO:
        print("no validation split: no evaluation during training", flush=True)
        trainer_args.eval_strategy = IntervalStrategy.NO
    budget = TrainingBudgetCallback(run_args.max_train_minutes)
    trainer = Trainer(
        model=model,
        args=trainer_args,
        train_dataset=train,
        eval_dataset=validation,
        data_collator=DataCollatorCTCWithPadding(processor, concat_probability=data_args.concat_probability,
                                                 seed=training_args.seed),
        compute_metrics=make_compute_metrics(processor),
        callbacks=[budget],
    )
    train_start, cpu_start = time.perf_counter(), process_cpu_seconds()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    train_cpu_seconds = process_cpu_seconds() - cpu_start
    print(f"training: {train_seconds / 60:.1f} min wall, {train_cpu_seconds / 60:.1f} min CPU", flush=True)

    if model_args.lora:
        model = model.merge_and_unload()
    model.eval()
    if training_args.process_index == 0:
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)

    results = {"num_train": None if isinstance(train, torch.utils.data.IterableDataset) else len(train),
               "parameters": parameters, "train_seconds": train_seconds,
               "train_cpu_seconds": train_cpu_seconds,
               "device": "cuda" if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads",
               "epochs_completed": trainer.state.epoch, "steps": trainer.state.global_step, **budget.summary()}
    return model, processor, results


def load_data(data_args: DataArguments, seed: int):
    """`{role: split}` for the roles `train`, `validation`, `test` and `heldout_engine` that the data has (roles ->
    `--train_split_name`, `--eval_split_name`, `--test_split_name`, `heldout_engine`): the user's data
    (`data_loading.load_splits`) or, with no source flag, the embedded corpus through the same path. Audio columns come
    undecoded; the audio and text columns are checked."""
    engines, engine_weights = parse_engines(data_args.engines)
    heldout_engines = parse_engines(data_args.heldout_engines)[0]

    def embedded():
        from mamba_zoo.corpora import load_transcribed

        return load_transcribed(data_args.kind, num_train=data_args.num_train, num_eval=data_args.num_eval, seed=seed,
                                engines=engines, engine_weights=engine_weights, heldout_engines=heldout_engines,
                                num_heldout=data_args.num_heldout if heldout_engines else None)

    splits = data_loading.load_splits(data_args, embedded=embedded)
    names = {"train": data_args.train_split_name, "validation": data_args.eval_split_name,
             "test": data_args.test_split_name, HELDOUT_SPLIT: HELDOUT_SPLIT}
    used = {role: splits[name] for role, name in names.items() if name in splits}
    for split in used.values():
        data_loading.require_column(split, data_args.audio_column_name, "--audio_column_name")
        data_loading.require_column(split, data_args.text_column_name, "--text_column_name")
    return used, {role: names[role] for role in used}


def main(argv=None):
    model_args, data_args, run_args, training_args = parse_args(argv)
    output_dir = training_args.output_dir
    script_start = time.perf_counter()
    source = data_loading.describe_source(data_args)  # None: the embedded corpus (and a clear error for two sources)
    if not run_args.eval_only:
        data_loading.check_streaming_training(data_args, training_args)
        if data_args.waveform_augment_copies > 0 and data_args.streaming:
            raise ValueError("--waveform_augment_copies needs map-style data (the augmented copies of every training "
                             "clip are computed before training and held in memory): drop --streaming or the copies.")
    if run_args.num_threads:
        torch.set_num_threads(run_args.num_threads)
        try:
            import numba

            numba.set_num_threads(min(run_args.num_threads, numba.config.NUMBA_NUM_THREADS))
        except ImportError:
            pass
    from transformers import set_seed

    set_seed(training_args.seed)
    engines, engine_weights = parse_engines(data_args.engines)
    heldout_engines = parse_engines(data_args.heldout_engines)[0] if source is None else ()
    audio_column, text_column = data_args.audio_column_name, data_args.text_column_name
    splits, split_names = load_data(data_args, training_args.seed)
    train_split = splits["train"]
    if not run_args.eval_only:
        train_split = data_loading.drop_long_clips(train_split, audio_column, data_args.max_duration_in_seconds)
    # the evaluation splits are decoded into memory (transcribed in length-sorted batches; --max_eval_samples bounds
    # them)
    validation, test, heldout = (decode_to_memory(splits[role], audio_column, text_column) if role in splits else None
                                 for role in ("validation", "test", HELDOUT_SPLIT))
    counts = [f"{'streamed' if data_loading.is_stream(train_split) else len(train_split)} train"] + [
        f"{len(split)} {split_names[role]}" for role, split in
        (("validation", validation), ("test", test), (HELDOUT_SPLIT, heldout)) if split is not None]
    corpus = (f"{source}" if source is not None else
              f"embedded {data_args.kind} corpus, training engines {', '.join(engines)}"
              f"{'; held out ' + ', '.join(heldout_engines) if heldout_engines else ''}")
    print(f"data: {' / '.join(counts)} utterances ({corpus}), {time.perf_counter() - script_start:.0f} s to load",
          flush=True)

    if run_args.eval_only:
        processor = MambaCTCProcessor.from_pretrained(output_dir)
        model = MambaForCTC.from_pretrained(output_dir).eval()
        results = json.loads(Path(output_dir, "eval_results.json").read_text())
        results["evaluated_separately"] = True
        if source is None:
            results.setdefault("training_engines", list(engines))  # what the checkpoint was trained on, if recorded
    else:
        views = None
        if data_args.waveform_augment_copies > 0:
            start = time.perf_counter()
            clips = decode_to_memory(train_split, audio_column, text_column).audio
            if not 0.0 <= data_args.waveform_augment_resynthesis <= 1.0:
                raise ValueError(f"--waveform_augment_resynthesis must be a probability in [0, 1], got "
                                 f"{data_args.waveform_augment_resynthesis}.")
            views = augmented_copies(clips, SAMPLING_RATE, data_args.waveform_augment_copies, training_args.seed,
                                     settings={"p_resynthesis": data_args.waveform_augment_resynthesis},
                                     num_workers=min(2, os.cpu_count() or 1), desc="train augmentation")
            print(f"waveform augmentation: {data_args.waveform_augment_copies} copies of {len(clips)} utterances in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
            del clips  # the originals are decoded again on the fly
        train = training_items(train_split, audio_column, text_column, views)
        model, processor, results = train_model(
            model_args, data_args, run_args, training_args, train, validation,
            transcripts=lambda: data_loading.column_texts(train_split, text_column, data_args.vocabulary_samples))
        if source is None:
            results["training_engines"] = list(engines)
            if engine_weights is not None:
                results["engine_weights"] = list(engine_weights)
        else:
            results["dataset"] = source
        if data_args.max_duration_in_seconds is not None:
            results["max_duration_in_seconds"] = data_args.max_duration_in_seconds
            if not data_loading.is_stream(splits["train"]):
                results["num_train_too_long"] = len(splits["train"]) - len(train_split)
        results["waveform_augment_copies"] = data_args.waveform_augment_copies
        results["waveform_augment_resynthesis"] = data_args.waveform_augment_resynthesis
        if training_args.process_index != 0:  # under a launcher: the main process evaluates and writes the files
            return results
    results["split_names"] = split_names
    if source is None:
        results["heldout_engines"] = list(heldout_engines)
    heard = sorted(set(heldout_engines) & set(results.get("training_engines") or []))
    if heard:
        print(f"warning: the {HELDOUT_SPLIT} split's engines {', '.join(heard)} were heard in training: its error "
              "rates do not measure generalisation to an unseen engine", flush=True)
    for name, split in (("validation", validation), ("test", test)):
        if split is None:
            for key in (name, f"{name}_utterances", f"{name}_beam"):  # eval_only: no stale numbers
                results.pop(key, None)
            continue
        predictions = transcribe(model, processor, split)
        results[name] = word_and_char_error_rates(predictions, split.text)
        results[name]["examples"] = [
            {"reference": r, "prediction": p} for r, p in list(zip(split.text, predictions))[:5]
        ]
        results[f"{name}_utterances"] = len(split)
        print(f"{name}: WER {100 * results[name]['wer']:.2f}%  CER {100 * results[name]['cer']:.2f}%", flush=True)
    for key in [k for k in results if k.startswith(f"{HELDOUT_SPLIT}_")]:  # eval_only: no stale held-out numbers
        del results[key]
    if heldout is not None:  # engines never heard in training, decoded exactly as test
        predictions = transcribe(model, processor, heldout)
        results.update(heldout_engine_rates(predictions, heldout))
        results[f"{HELDOUT_SPLIT}_utterances"] = len(heldout)
        results[f"{HELDOUT_SPLIT}_examples"] = [
            {"reference": r, "prediction": p} for r, p in list(zip(heldout.text, predictions))[:5]
        ]
        per_engine = "".join(f"  {k[len('heldout_engine_wer_'):]} WER {100 * v:.2f}%" for k, v in results.items()
                             if k.startswith("heldout_engine_wer_"))
        engines_said = f" ({', '.join(heldout_engines)}{'' if heard else ', never heard in training'})" \
            if heldout_engines else ""
        print(f"{HELDOUT_SPLIT}{engines_said}: "
              f"WER {100 * results['heldout_engine_wer']:.2f}%  CER {100 * results['heldout_engine_cer']:.2f}%"
              f"{per_engine}", flush=True)
    if run_args.beam_width and test is not None:
        try:
            decoder = processor.build_beam_decoder()
            predictions = transcribe(model, processor, test, beam_decoder=decoder)
            results["test_beam"] = word_and_char_error_rates(predictions, test.text)
            print(f"test (beam {run_args.beam_width}): WER {100 * results['test_beam']['wer']:.2f}%", flush=True)
            if heldout is not None:
                predictions = transcribe(model, processor, heldout, beam_decoder=decoder)
                results[f"{HELDOUT_SPLIT}_beam"] = word_and_char_error_rates(predictions, heldout.text)
                print(f"{HELDOUT_SPLIT} (beam {run_args.beam_width}): "
                      f"WER {100 * results[f'{HELDOUT_SPLIT}_beam']['wer']:.2f}%", flush=True)
        except ImportError as error:
            print(f"beam search skipped: {error}")
    long_form_source = test if test is not None else validation
    if not run_args.skip_long_form and long_form_source is not None:
        results["long_form"] = long_form_check(output_dir, long_form_source)
        print("long form:", json.dumps({k: v for k, v in results["long_form"].items() if k != "word_timestamps_first"}),
              flush=True)
    key = "eval_only" if run_args.eval_only else "total"
    results[f"{key}_seconds"] = time.perf_counter() - script_start
    results[f"{key}_cpu_seconds"] = process_cpu_seconds()
    write_model_card(output_dir, data_args.kind, results)
    Path(output_dir, "eval_results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"saved to {output_dir}; train {results['train_seconds'] / 60:.1f} min wall "
          f"({results['train_cpu_seconds'] / 60:.1f} min CPU), whole script {results[f'{key}_seconds'] / 60:.1f} min wall")
    return results


if __name__ == "__main__":
    main()
    end_distributed_run()  # under torchrun on CPU: leave without gloo's exit-time abort
