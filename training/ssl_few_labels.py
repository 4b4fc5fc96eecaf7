#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Does self-supervised pretraining help when labels are scarce? Fine-tune SSAMBA with a few labelled clips per class
twice, from the SSL-pretrained checkpoint and from random initialisation (same architecture, same data, same steps),
and compare the accuracy on voices never heard in training.

    python training/ssamba_keywords_main.py                      # produces outputs/ssamba-keywords-pretrained
    python training/ssl_few_labels.py --pretrained outputs/ssamba-keywords-pretrained --clips_per_class 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="outputs/ssamba-keywords-pretrained")
    parser.add_argument("--clips_per_class", type=int, default=5)
    parser.add_argument("--epochs", type=float, default=40)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--stride", type=int, default=None, help="patch stride (default: the pretrained model's)")
    parser.add_argument("--num_per_class", type=int, default=200, help="corpus size (for the cached corpus)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output_dir", default="outputs/ssamba-few-labels")
    args = parser.parse_args(argv)

    import torch
    from transformers import TrainingArguments

    import finetune_audio_classification as finetune
    from mamba_zoo import SSAMBAConfig
    from mamba_zoo.corpora import load_keywords

    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_keywords(num_per_class=args.num_per_class)
    pretrained = SSAMBAConfig.from_pretrained(args.pretrained)
    results = {}
    for seed in args.seeds:
        for init in ("pretrained", "random"):
            started = time.time()
            model_args = finetune.ModelArguments(
                model_name_or_path=args.pretrained if init == "pretrained" else None,
                hidden_size=pretrained.hidden_size, num_hidden_layers=pretrained.num_hidden_layers,
                frequency_stride=args.stride, time_stride=args.stride, drop_path_rate=0.0,
                patch_frames=pretrained.time_patch_size if pretrained.frequency_patch_size == pretrained.num_mel_bins
                else None,
            )
            data_args = finetune.DataArguments(train_per_class=args.clips_per_class, eval_split_name="none")
            training_args = TrainingArguments(
                output_dir=os.path.join(args.output_dir, f"{init}-seed{seed}"), num_train_epochs=args.epochs,
                per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
                learning_rate=args.learning_rate, warmup_steps=0.1, lr_scheduler_type="cosine", weight_decay=0.05,
                eval_strategy="no", save_strategy="no", report_to=[], seed=seed, logging_steps=10,
                dataloader_num_workers=0, disable_tqdm=True,
            )
            run = finetune.run(model_args, data_args, training_args, dataset=corpus)
            results[f"{init}/seed{seed}"] = {"test_accuracy": run["test_accuracy"], "train_clips": run["train_clips"],
                                             "steps": run["train_steps"], "minutes": round((time.time() - started) / 60, 2)}
            print(init, seed, results[f"{init}/seed{seed}"], flush=True)

    print(f"\nFew labels: {args.clips_per_class} clips per class ({len(corpus['train'].features['label'].names)} "
          f"classes), test = voices never heard in training")
    print("| init | seed | test accuracy |\n|---|---|---|")
    for key, value in results.items():
        init, seed = key.split("/")
        print(f"| {init} | {seed[4:]} | {value['test_accuracy']:.4f} |")
    for init in ("pretrained", "random"):
        accs = [v["test_accuracy"] for k, v in results.items() if k.startswith(init)]
        print(f"mean {init}: {sum(accs) / len(accs):.4f}")
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
