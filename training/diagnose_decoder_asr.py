#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Does a trained MADEON checkpoint listen? Teacher-forced diagnostics on the test split of the embedded corpus:

- cross-entropy and accuracy of the next character by text position (a decoder that reads the speech stays good
  late in the transcript; one that leans on its text prior drifts after the first words);
- the prefix swap: every utterance's speech prefix replaced by another test utterance's, same transcript. A model
  that ignores the audio barely changes (KL between the two predictive distributions near 0, cross-entropy unchanged);
  one that listens loses most of its accuracy;
- with a CTC head (`ctc_loss_weight > 0`), the greedy CTC transcript of the prefix states, scored like the decoder.

- with `--ctc_weights 0,0.3,0.5 --beams 1,4`: decoding sweeps, WER/CER on the split and on the held-out engine
  split for every joint CTC/attention weight x beam size (`generate(ctc_weight=..., num_beams=...)`).

    python training/diagnose_decoder_asr.py outputs/mamba-asr-digits [--num_eval 200] [--json out.json]
    python training/diagnose_decoder_asr.py outputs/mamba-asr-digits --ctc_weights 0,0.3,0.5 --beams 1,4 --decode_only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mamba_zoo  # noqa: E402,F401
from mamba_zoo import MambaASRProcessor, MambaDecoderOnlyASR, normalize_transcript  # noqa: E402
from train_decoder_asr import HELDOUT_SPLIT, SAMPLING_RATE, collate, encode_item, error_rates, transcribe  # noqa: E402
import data_loading  # noqa: E402

POSITION_BINS = ((1, 5), (5, 10), (10, 20), (20, 40), (40, 1000))


@torch.no_grad()
def teacher_forced(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-probabilities of the whole vocabulary `(batch, T-1, V)` and the targets `(batch, T-1)` (-100
    where there is none)."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return torch.log_softmax(logits[:, :-1].float(), -1), batch["labels"][:, 1:]


def diagnose(model, processor, audio: list, text: list, batch_size: int = 32, seed: int = 0) -> dict:
    """The position table, the prefix-swap numbers and (with a CTC head) the CTC transcript's WER."""
    import jiwer

    model.eval()
    items = [encode_item(processor, a, t) for a, t in zip(audio, text)]
    swapped_order = np.random.default_rng(seed).permutation(len(items))
    swapped_order = np.where(swapped_order == np.arange(len(items)), (swapped_order + 1) % len(items), swapped_order)
    speech_key = "input_features" if "input_features" in items[0] else "speech_ids"
    sums = {name: np.zeros(len(POSITION_BINS)) for name in ("ce", "correct", "ce_swapped", "correct_swapped", "kl")}
    counts = np.zeros(len(POSITION_BINS))
    ctc_texts = []
    for start in range(0, len(items), batch_size):
        chunk = list(range(start, min(start + batch_size, len(items))))
        batch = collate([items[i] for i in chunk])
        swapped = collate([{**items[i], speech_key: items[swapped_order[i]][speech_key]} for i in chunk])
        log_probs, targets = teacher_forced(model, batch)
        log_probs_swapped, _ = teacher_forced(model, swapped)
        valid = targets != -100
        safe = targets.clamp(min=0)
        ce = -log_probs.gather(-1, safe[..., None])[..., 0]
        ce_swapped = -log_probs_swapped.gather(-1, safe[..., None])[..., 0]
        correct = log_probs.argmax(-1) == targets
        correct_swapped = log_probs_swapped.argmax(-1) == targets
        kl = (log_probs.exp() * (log_probs - log_probs_swapped)).sum(-1)
        position = torch.arange(1, targets.shape[1] + 1)[None].expand_as(targets)
        for k, (low, high) in enumerate(POSITION_BINS):
            in_bin = valid & (position >= low) & (position < high)
            counts[k] += int(in_bin.sum())
            for name, value in (("ce", ce), ("correct", correct), ("ce_swapped", ce_swapped),
                                ("correct_swapped", correct_swapped), ("kl", kl)):
                sums[name][k] += float(value.float()[in_bin].sum())
        if model.ctc_head is not None:
            out = model.model(**{k: v for k, v in batch.items() if k != "labels"})
            ids = model.ctc_logits(out.speech_hidden_state).argmax(-1)
            frames = out.speech_lengths * model.config.ctc_upsample
            for row, length in zip(ids, frames):
                collapsed = [int(t) for j, t in enumerate(row[:length]) if j == 0 or t != row[j - 1]]
                ctc_texts.append(processor.decode([t for t in collapsed if t != model.config.pad_token_id]))
    table = []
    for k, (low, high) in enumerate(POSITION_BINS):
        if counts[k]:
            table.append({"positions": f"{low}-{high - 1}", "tokens": int(counts[k]),
                          **{name: round(float(sums[name][k] / counts[k]), 4) for name in sums}})
    total = counts.sum()
    result = {name: round(float(sums[name].sum() / total), 4) for name in sums}
    result["by_position"] = table
    if ctc_texts:
        references = [normalize_transcript(t) for t in text]
        hypotheses = [normalize_transcript(t) or "<empty>" for t in ctc_texts]
        result["ctc_greedy_wer"] = float(jiwer.wer(references, hypotheses))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--kind", default="digits")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_eval", type=int, default=200)
    parser.add_argument("--engines", default="espeak-ng:3,festival:1")
    parser.add_argument("--heldout_engines", default="sam")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--ctc_weights", default=None,
                        help="comma-separated joint CTC/attention decoding weights to sweep (needs a CTC head)")
    parser.add_argument("--beams", default="1", help="comma-separated beam sizes for the sweep")
    parser.add_argument("--decode_only", action="store_true", help="only the decoding sweep")
    args = parser.parse_args(argv)
    if args.decode_only and not args.ctc_weights:
        parser.error("--decode_only runs only the decoding sweep: give it --ctc_weights (e.g. 0,0.5).")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from common import parse_engines

    from mamba_zoo.corpora import load_transcribed

    engines, weights = parse_engines(args.engines)
    corpus = load_transcribed(args.kind, num_train=args.num_train, num_eval=args.num_eval, seed=args.seed,
                              engines=engines, engine_weights=weights,
                              heldout_engines=parse_engines(args.heldout_engines)[0], progress=False)
    audio, text, _ = data_loading.decode_split(corpus[args.split], SAMPLING_RATE)
    model = MambaDecoderOnlyASR.from_pretrained(args.checkpoint)
    processor = MambaASRProcessor.from_pretrained(args.checkpoint)
    sweep = []
    if args.ctc_weights:
        splits = {args.split: (audio, text)}
        if HELDOUT_SPLIT in corpus:
            splits[HELDOUT_SPLIT] = data_loading.decode_split(corpus[HELDOUT_SPLIT], SAMPLING_RATE)[:2]
        print("| CTC weight | beams | " + " | ".join(f"{name} WER / CER" for name in splits) + " | seconds |")
        print("|---|---|" + "---|" * len(splits) + "---|")
        for weight in (float(w) for w in args.ctc_weights.split(",")):
            for beams in (int(b) for b in args.beams.split(",")):
                row = {"ctc_weight": weight, "num_beams": beams}
                started = time.time()
                for name, (split_audio, split_text) in splits.items():
                    hypotheses = transcribe(model, processor, split_audio, num_beams=beams, ctc_weight=weight)
                    rates = error_rates(split_text, hypotheses)
                    row[f"{name}_wer"], row[f"{name}_cer"] = round(rates["wer"], 2), round(rates["cer"], 2)
                row["seconds"] = round(time.time() - started, 1)
                sweep.append(row)
                print(f"| {weight} | {beams} | " + " | ".join(f"{row[name + '_wer']:.1f}% / {row[name + '_cer']:.1f}%"
                                                           for name in splits) + f" | {row['seconds']} |", flush=True)
    if args.decode_only:
        if args.json:
            Path(args.json).write_text(json.dumps({"decoding": sweep}, indent=2))
        return {"decoding": sweep}
    result = diagnose(model, processor, audio, text)
    result["decoding"] = sweep
    print(f"{args.checkpoint}, {args.split} ({len(text)} utterances), teacher-forced:")
    print("| text positions | tokens | CE | accuracy | CE, swapped prefix | accuracy, swapped | KL(true || swapped) |")
    print("|---|---|---|---|---|---|---|")
    for row in result["by_position"] + [{"positions": "all", "tokens": sum(r["tokens"] for r in result["by_position"]),
                                        **{k: result[k] for k in ("ce", "correct", "ce_swapped", "correct_swapped",
                                                                  "kl")}}]:
        print(f"| {row['positions']} | {row['tokens']} | {row['ce']:.3f} | {row['correct']:.3f} | "
              f"{row['ce_swapped']:.3f} | {row['correct_swapped']:.3f} | {row['kl']:.3f} |")
    if "ctc_greedy_wer" in result:
        print(f"CTC head, greedy: WER {100 * result['ctc_greedy_wer']:.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
