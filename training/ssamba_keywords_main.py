#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""The main job: SSAMBA end to end on the embedded keyword corpus, on CPU.

    python training/ssamba_keywords_main.py            # -> outputs/ssamba-keywords/

A fixed-length recipe: 178 pretraining and 1759 fine-tuning steps of batch 32, the documented run of
model_cards/ssamba.md (18.4 min in all on an idle 2-core machine in session 10, about 19 with the larger held-out split; longer on a busy one, but the same model).
Data: espeak-ng and Festival voices (shares 3:1; `--engines`), 2 seeded voice/channel-augmented copies of every
fine-tuning clip (`--waveform_augment_copies`), and two engines held out (`--heldout_engines`): SAM (1982 formant
tables) and Pico (a statistical parametric voice trained on recordings), never heard in training, scored apart on 200
clips per class (`heldout_engine_accuracy`, and one per engine: `heldout_engine_accuracy_sam`, `..._pico`). Festival,
SAM and Pico: `bash scripts/install_engines.sh`.
`--max_train_minutes` (opt-in) caps the training time of both phases together and records in `results.json` whether
it cut them.

1. build (or reuse) the keyword corpus: 10 command words + _silence_ + _unknown_, test voices never heard in training;
2. pretrain SSAMBA self-supervised (SSAST masked patch modelling) on the training clips without their labels;
3. fine-tune the pretrained model on the labelled clips (transformers Trainer);
4. evaluate on the held-out voices, save the checkpoint (+ feature extractor + model card);
5. classify a few held-out clips with `pipeline("audio-classification")` from the saved directory;
6. print a results table (also written to `results.json` in the output directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/ssamba-keywords")
    parser.add_argument("--num_per_class", type=int, default=200, help="training clips per class in the corpus")
    parser.add_argument("--engines", default="espeak-ng:3,festival:1",
                        help="training engines, comma-separated, optionally with their shares of the clips "
                             "(python -m mamba_zoo.corpora engines lists them)")
    parser.add_argument("--heldout_engines", default="sam,pico",
                        help="engines never heard in training, evaluated apart ('' for none)")
    parser.add_argument("--num_heldout_per_class", type=int, default=200,
                        help="clips per class of the held-out engines (2400 clips: the number that says whether the "
                             "model generalises gets less sampling noise than test's 50 per class)")
    parser.add_argument("--waveform_augment_copies", type=int, default=2,
                        help="seeded voice + channel augmented copies of every fine-tuning clip (0: none)")
    parser.add_argument("--waveform_augment_resynthesis", type=float, default=0.0,
                        help="probability that an augmented copy also gets its voice source replaced "
                             "(source-filter resynthesis); 0: off")
    parser.add_argument("--hidden_size", type=int, default=128, help="model width (SSAMBA-tiny: 192)")
    parser.add_argument("--num_hidden_layers", type=int, default=8, help="depth (released SSAMBA: 24)")
    parser.add_argument("--patch_frames", type=int, default=4,
                        help="frame-based tokens (SSAST-Frame): every mel bin x this many frames; 0 = 16x16 patches")
    parser.add_argument("--layer_pairing", action="store_true",
                        help="SSAMBA's released layer pairing (layer 2i reads forward, 2i+1 reversed, summed); by "
                             "default every layer is a bidirectional mixer in sequence, which learned faster here")
    parser.add_argument("--stride", type=int, default=None,
                        help="with --patch_frames 0: fine-tuning patch stride (SSAMBA: 10; default 16)")
    parser.add_argument("--pretrain_steps", type=int, default=178, help="2.4 epochs of the 2400 unlabeled clips")
    parser.add_argument("--finetune_steps", type=int, default=1759, help="23.5 epochs of the 2400 labelled clips")
    parser.add_argument("--max_train_minutes", type=float, default=None,
                        help="opt-in wall-clock budget for pretraining + fine-tuning together (default: none); a cut "
                             "run says so in results.json (stopped_by_time_budget)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs available)")
    parser.add_argument("--skip_pretraining", action="store_true", help="fine-tune from random initialisation")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    import torch
    from transformers import TrainingArguments, pipeline

    from mamba_zoo import SoundfileAudioClassificationPipeline
    from transformers.utils import logging as hf_logging

    import finetune_audio_classification as finetune
    import pretrain_ssamba as pretrain
    from mamba_zoo.corpora import load_keywords

    hf_logging.set_verbosity_warning()
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(max(1, threads))
    print(f"SSAMBA keyword job: {threads} CPU threads, torch {torch.__version__}")

    # 1. data ---------------------------------------------------------------------------------------------------------
    t0 = time.time()
    print("[1/5] keyword corpus (built once, then cached)")
    engines, engine_weights = finetune.parse_engines(args.engines)
    heldout_engines = finetune.engine_list(args.heldout_engines)
    corpus = load_keywords(num_per_class=args.num_per_class, seed=args.seed, engines=engines,
                           engine_weights=engine_weights, heldout_engines=heldout_engines,
                           num_heldout_per_class=args.num_heldout_per_class if heldout_engines else None)
    names = corpus["train"].features["label"].names
    corpus_minutes = (time.time() - t0) / 60
    print(f"      {len(corpus['train'])} train / {len(corpus['validation'])} validation / {len(corpus['test'])} test "
          f"clips, {len(names)} classes, voices disjoint across splits ({corpus_minutes:.1f} min)")
    if "heldout_engine" in corpus:
        print(f"      + {len(corpus['heldout_engine'])} clips from engines never heard in training: {args.heldout_engines}")

    common = dict(report_to=[], seed=args.seed, save_strategy="no", logging_steps=20, dataloader_num_workers=0,
                  per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64)
    pretrained_dir = os.path.join(args.output_dir + "-pretrained")

    # 2. self-supervised pretraining -------------------------------------------------------------------------------
    pretrain_results = {}
    if not args.skip_pretraining:
        print(f"[2/5] self-supervised pretraining ({args.pretrain_steps} steps)")
        model_args = pretrain.PretrainModelArguments(
            hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers, drop_path_rate=0.0,
            share_mask_between_objectives=True, patch_frames=args.patch_frames or None,
            bidirectional_layer_pairing=args.layer_pairing,
        )
        data_args = pretrain.PretrainDataArguments(max_train_minutes=args.max_train_minutes)
        training_args = TrainingArguments(
            output_dir=pretrained_dir, max_steps=args.pretrain_steps, learning_rate=1e-3, warmup_steps=0.05,
            lr_scheduler_type="cosine", weight_decay=0.05, **common,
        )
        pretrain_results = pretrain.run(model_args, data_args, training_args,
                                        dataset=corpus["train"].select_columns(["audio"]))
        print(f"      masked-patch accuracy {pretrain_results['final_discriminative_accuracy']:.3f} "
              f"(chance {pretrain_results['chance_discriminative_accuracy']:.3f}), "
              f"reconstruction MSE {pretrain_results['final_generative_mse']:.3f}")
    else:
        print("[2/5] pretraining skipped (--skip_pretraining)")

    # 3-4. fine-tuning + evaluation on held-out voices -------------------------------------------------------------
    print(f"[3/5] fine-tuning on the labelled clips ({args.finetune_steps} steps)")
    model_args = finetune.ModelArguments(
        model_name_or_path=None if args.skip_pretraining else pretrained_dir,
        hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
        patch_frames=args.patch_frames or None, frequency_stride=args.stride, time_stride=args.stride,
        drop_path_rate=0.0, bidirectional_layer_pairing=args.layer_pairing,
    )
    finetune_minutes = None  # what the budget leaves after pretraining
    if args.max_train_minutes is not None:
        finetune_minutes = max(0.0, args.max_train_minutes - pretrain_results.get("train_minutes", 0.0))
    data_args = finetune.DataArguments(max_train_minutes=finetune_minutes, engines=args.engines,
                                       heldout_engines=args.heldout_engines,
                                       waveform_augment_copies=args.waveform_augment_copies,
                                       waveform_augment_resynthesis=args.waveform_augment_resynthesis)
    training_args = TrainingArguments(
        output_dir=args.output_dir, max_steps=args.finetune_steps, learning_rate=args.learning_rate,
        warmup_steps=0.05, lr_scheduler_type="cosine", weight_decay=0.05, eval_strategy="no", **common,
    )
    results = finetune.run(model_args, data_args, training_args, dataset=corpus)
    print(f"[4/5] test accuracy on voices never heard in training: {results['test_accuracy']:.4f} "
          f"({results['test_clips']} clips); saved to {os.path.abspath(args.output_dir)}")
    per_engine = {key: value for key, value in results.items() if key.startswith("heldout_engine_accuracy_")}
    if "heldout_engine_accuracy" in results:
        by_engine = ", ".join(f"{key.rsplit('_', 1)[1]} {value:.4f}" for key, value in per_engine.items())
        print(f"      accuracy on engines never heard in training ({args.heldout_engines}): "
              f"{results['heldout_engine_accuracy']:.4f} ({results['heldout_engine_clips']} clips"
              + (f"; {by_engine})" if by_engine else ")"))

    # 5. pipeline on held-out clips ----------------------------------------------------------------------------------
    print("[5/5] pipeline('audio-classification') on held-out clips")
    clf = pipeline("audio-classification", model=args.output_dir, pipeline_class=SoundfileAudioClassificationPipeline)
    test = corpus["test"]
    shown = []
    for i in range(0, len(test), max(1, len(test) // 6))[:6]:
        row = test[i]
        top = clf(row["audio"], top_k=1)[0]
        truth = names[row["label"]]
        shown.append((truth, top["label"], top["score"]))
        print(f"      {row['voice'] or '(noise)':<28} said {truth!r:<12} -> {top['label']!r:<12} ({top['score']:.2f})")

    total_minutes = (time.time() - started) / 60
    summary = {
        "corpus_minutes": round(corpus_minutes, 2),
        "pretrain_steps": pretrain_results.get("steps"),
        "pretrain_minutes": pretrain_results.get("train_minutes"),
        "pretrain_masked_patch_accuracy": pretrain_results.get("final_discriminative_accuracy"),
        "finetune_minutes": results["train_minutes"],
        "finetune_steps": results["train_steps"],
        "validation_accuracy": round(results["validation_accuracy"], 4),
        "test_accuracy": round(results["test_accuracy"], 4),
        "heldout_engine_accuracy": round(results["heldout_engine_accuracy"], 4)
                                   if "heldout_engine_accuracy" in results else None,
        **{key: round(value, 4) for key, value in per_engine.items()},
        "training_engines": args.engines,
        "heldout_engines": args.heldout_engines,
        "waveform_augment_copies": args.waveform_augment_copies,
        "waveform_augment_resynthesis": args.waveform_augment_resynthesis,
        "pipeline_correct": f"{sum(t == p for t, p, _ in shown)}/{len(shown)}",
        "total_minutes": round(total_minutes, 2),
        "stopped_by_time_budget": pretrain_results.get("stopped_by_time_budget", False)
                                  or results["stopped_by_time_budget"],
        "model": f"SSAMBA width {args.hidden_size}, {args.num_hidden_layers} layers"
                 + (" (paired)" if args.layer_pairing else "") + ", "
                 + (f"frame patches (all mels x {args.patch_frames} frames)" if args.patch_frames
                    else f"16x16 patches, stride {args.stride or 16}"),
        "checkpoint": os.path.abspath(args.output_dir),
    }
    Path(args.output_dir, "results.json").write_text(json.dumps({**summary, "finetune": results,
                                                                  "pretrain": pretrain_results}, indent=2))
    print("\n| step | result |\n|---|---|")
    for key, value in summary.items():
        print(f"| {key} | {value} |")
    print(f"\nCheckpoint: {os.path.abspath(args.output_dir)}")
    return summary


if __name__ == "__main__":
    main()
