#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Does BlackMamba (top-1 MoE) beat a dense stack with the same active parameters? Train `train_causal_lm.py` once per
architecture and seed, every run on one thread and `--jobs` runs at a time, and print a paired table: validation
perplexity and fact recall per seed, each architecture's difference to the baseline, the means, how many seeds each
architecture wins and a two-sided sign-test p-value. One seed's difference says little at this size (runs move by a few
percent with any change of their trajectory); the paired multi-seed table is the measurement.

    python training/compare_moe_dense.py                              # the capacity-bound recipe below, seeds 0-5
    python training/compare_moe_dense.py --archs moe dense mamba --seeds 0 1 2
    python training/compare_moe_dense.py --seeds 0 1 -- --hidden_size 64 --ffn_hidden_size 128 --num_layers 8
    python training/compare_moe_dense.py -- --routing sinkhorn --router_aux_loss_coef 0   # Sinkhorn, as released

Flags after `--` go to every `train_causal_lm.py` run and win over `RECIPE` (argparse keeps a flag's last value); the
script sets `--arch`, `--seed`, `--threads 1` and `--output_dir OUTPUT_DIR/ARCH-seedS` itself. `--reuse` keeps a run
whose directory already holds its metrics from the same command. The table and `summary.json` go to `--output_dir`.

`RECIPE` is a small, capacity-bound setting (model card, "MoE vs dense where the dense model runs out of capacity"):
4 layers of width 32 (2 Mamba + 2 MLP / MoE layers, MLP width 64, 8 experts: 49k parameters active per token) learning
fixed facts about 2000 pseudo-words (`--corpus_kind facts`), 3000 steps, about 3 minutes a run on one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "train_causal_lm.py"

RECIPE = [
    "--tokenizer", "bpe", "--corpus_kind", "facts", "--num_sentences", "60000", "--lexicon_size", "2000",
    "--hidden_size", "32", "--ffn_hidden_size", "64", "--num_layers", "4", "--num_experts", "8",
    "--per_device_train_batch_size", "16", "--max_steps", "3000", "--warmup_steps", "100", "--learning_rate", "3e-3",
    "--routing", "argmax", "--router_aux_loss_coef", "0.01", "--logging_steps", "200",
]


def run_command(arch: str, seed: int, run_dir: Path, extra: list[str]) -> list[str]:
    """The `train_causal_lm.py` command line of one run (without the interpreter)."""
    return [str(SCRIPT), *RECIPE, *extra, "--arch", arch, "--seed", str(seed), "--threads", "1",
            "--output_dir", str(run_dir)]


def train_one(arch: str, seed: int, run_dir: Path, extra: list[str], reuse: bool) -> dict:
    """Run (or, with `reuse`, re-read) one training run; returns its `metrics.json`. A failed run raises with the tail
    of its log."""
    command = run_command(arch, seed, run_dir, extra)
    metrics_file, command_file, log_file = run_dir / "metrics.json", run_dir / "command.json", run_dir / "train.log"
    if reuse and metrics_file.is_file() and command_file.is_file() and json.loads(command_file.read_text()) == command:
        return json.loads(metrics_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_file.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    with open(log_file, "w") as log:
        finished = subprocess.run([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT, env=env)
    if finished.returncode != 0 or not metrics_file.is_file():
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"Run {arch} seed {seed} failed (exit code {finished.returncode}); the end of {log_file}:\n"
                           f"{tail}")
    command_file.write_text(json.dumps(command))
    return json.loads(metrics_file.read_text())


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided sign test: the probability of a split at least as uneven as `wins`/`losses` if either side were
    equally likely to win each seed (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def summarise(results: dict[str, dict[int, dict]], baseline: str) -> dict:
    """Paired summary of `results[arch][seed]` (metrics.json contents) against `baseline`.

    Per architecture: the perplexity of every seed, the mean, the relative difference to the baseline per seed
    (`ppl / ppl_baseline - 1`, in percent; negative = better than the baseline), its mean, the number of seeds
    with a lower / higher perplexity than the baseline, the sign-test p-value, and the fact-recall means when the
    runs report them."""
    seeds = sorted(results[baseline])
    base = [results[baseline][s]["validation"]["perplexity"] for s in seeds]
    summary = {"baseline": baseline, "seeds": seeds, "archs": {}}
    for arch, runs in results.items():
        if sorted(runs) != seeds:
            raise ValueError(f"{arch} has seeds {sorted(runs)}, the baseline {baseline} has {seeds}: pair every seed.")
        ppl = [runs[s]["validation"]["perplexity"] for s in seeds]
        diff = [100 * (p / b - 1) for p, b in zip(ppl, base)]
        wins, losses = sum(d < 0 for d in diff), sum(d > 0 for d in diff)
        entry = {
            "parameters": runs[seeds[0]]["parameters"], "perplexity": ppl, "mean_perplexity": sum(ppl) / len(ppl),
            "vs_baseline_percent": diff, "mean_vs_baseline_percent": sum(diff) / len(diff),
            "wins": wins, "losses": losses, "sign_test_p": sign_test_p(wins, losses),
            "train_seconds": [runs[s]["train_seconds"] for s in seeds],
        }
        facts = [runs[s]["validation"].get("facts", {}) for s in seeds]
        if all("answer_accuracy" in f for f in facts):
            entry["fact_recall"] = [f["answer_accuracy"] for f in facts]
            entry["mean_fact_recall"] = sum(entry["fact_recall"]) / len(facts)
            entry["mean_answer_loss"] = sum(f["answer_loss"] for f in facts) / len(facts)
        summary["archs"][arch] = entry
    return summary


def format_table(summary: dict) -> str:
    """A Markdown table of `summarise`'s result: one row per seed, then the means and the win counts."""
    archs, baseline = list(summary["archs"]), summary["baseline"]
    others = [a for a in archs if a != baseline]
    head = ["seed", *[f"{a} ppl / recall" for a in archs], *[f"{a} vs {baseline}" for a in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(arch: str, index: int) -> str:
        entry = summary["archs"][arch]
        recall = f" / {100 * entry['fact_recall'][index]:.1f}%" if "fact_recall" in entry else ""
        return f"{entry['perplexity'][index]:.3f}{recall}"

    for i, seed in enumerate(summary["seeds"]):
        row = [str(seed), *[cell(a, i) for a in archs],
               *[f"{summary['archs'][a]['vs_baseline_percent'][i]:+.1f}%" for a in others]]
        lines.append("| " + " | ".join(row) + " |")
    mean = ["mean"]
    for a in archs:
        entry = summary["archs"][a]
        recall = f" / {100 * entry['mean_fact_recall']:.1f}%" if "mean_fact_recall" in entry else ""
        mean.append(f"{entry['mean_perplexity']:.3f}{recall}")
    mean += [f"{summary['archs'][a]['mean_vs_baseline_percent']:+.1f}%" for a in others]
    lines.append("| " + " | ".join(mean) + " |")
    lines.append("")
    for a in others:
        entry = summary["archs"][a]
        lines.append(f"{a}: lower perplexity than {baseline} in {entry['wins']} of {len(summary['seeds'])} seeds "
                     f"(higher in {entry['losses']}; two-sided sign test p = {entry['sign_test_p']:.3f}); "
                     f"active / total parameters {entry['parameters']['active']:,} / {entry['parameters']['total']:,}")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        extra, argv = argv[argv.index("--") + 1:], argv[:argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["moe", "dense"], choices=["moe", "dense", "mamba"])
    parser.add_argument("--baseline", default="dense", help="the architecture the others are compared with")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (one thread each)")
    parser.add_argument("--output_dir", default="outputs/moe-vs-dense")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of the same command")
    args = parser.parse_args(argv)
    if args.baseline not in args.archs:
        parser.error(f"--baseline {args.baseline} is not among --archs {args.archs}; add it or pick one of them.")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}.")
    reserved = {"--arch", "--seed", "--threads", "--output_dir"} & {flag.split("=")[0] for flag in extra}
    if reserved:
        parser.error(f"{sorted(reserved)} after -- are set by this script per run; use --archs / --seeds / "
                     "--output_dir instead.")

    out = Path(args.output_dir)
    plan = [(arch, seed) for seed in args.seeds for arch in args.archs]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {key: pool.submit(train_one, key[0], key[1], out / f"{key[0]}-seed{key[1]}", extra, args.reuse)
                   for key in plan}
        results: dict[str, dict[int, dict]] = {arch: {} for arch in args.archs}
        for (arch, seed), future in futures.items():
            results[arch][seed] = future.result()
    summary = summarise(results, args.baseline)
    summary["command"] = {"recipe": RECIPE, "extra": extra}
    table = format_table(summary)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(table + "\n")
    return summary


if __name__ == "__main__":
    main()
