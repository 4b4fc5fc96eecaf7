# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Plumbing shared by the training scripts: command-line parsing (transformers' `HfArgumentParser` with the script's
own defaults for the Trainer flags the user does not pass), the opt-in wall-clock training budget, and the ending of a
run under a launcher.

Recipes are fixed-length (steps or epochs): the same command gives the same model on an idle or a busy machine. A
clock budget (`--max_train_minutes`, the same name in every script) is opt-in only, and a run it cuts says so in its
results (`"stopped_by_time_budget": true` beside the steps it trained) and in a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from transformers import TrainerCallback

logger = logging.getLogger("training")

wall_clock = time.monotonic  # the budget's clock (tests replace it)


def max_train_minutes_field():
    """The `max_train_minutes` dataclass field of every script (one name, one meaning)."""
    return dataclasses.field(default=None, metadata={
        "help": "opt-in wall-clock budget: stop training at the first step boundary after this many minutes (the "
                "results then say `stopped_by_time_budget`). Default: none, train the recipe's full length"})


class TrainingBudgetCallback(TrainerCallback):
    """Stop training at the first step boundary after `max_minutes` of wall time since training began (no budget
    with `None`), and record whether and at which step it did (`summary()`, merged into each script's results).

    The learning-rate schedule is not fitted to the budget: a cut run ends with the schedule unfinished, and says so."""

    def __init__(self, max_minutes: Optional[float]):
        self.max_minutes = max_minutes
        self.start = None
        self.stopped_at_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = wall_clock()

    def on_step_end(self, args, state, control, **kwargs):
        if self.max_minutes is None:
            return control
        out_of_time = wall_clock() - self.start >= 60 * self.max_minutes
        # every process must stop at the same step, or the others wait forever in the next gradient all-reduce
        if _on_any_process(out_of_time, args) and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
            logger.warning("Time budget of %g min reached: training stopped at step %d of %d (the recipe was cut "
                           "short; its results are not those of the full run).", self.max_minutes, state.global_step,
                           state.max_steps)
        return control

    def summary(self) -> dict:
        """`stopped_by_time_budget` (always, so that a full-length run says so too) and the budget, if one was set;
        a cut run's step count is the `steps` its script reports."""
        budget = {} if self.max_minutes is None else {"max_train_minutes": self.max_minutes}
        return {"stopped_by_time_budget": self.stopped_at_step is not None, **budget}


def _on_any_process(flag: bool, args) -> bool:
    """`flag` or-ed over the processes of a distributed run (a no-op in a single process)."""
    import torch
    import torch.distributed as dist

    if args.world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor(float(flag), device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


# ---------------------------------------------------------------------------------------------------------- parsing


def passed_fields(parser, argv: list[str]) -> set[str]:
    """Dataclass fields named by the flags in `argv` (`--x`, `--x=v`, `--no_x`, dashed spellings)."""
    actions = parser._option_string_actions  # argparse's flag -> action table
    return {actions[t.split("=", 1)[0]].dest for t in argv if t.split("=", 1)[0] in actions}


def defaults_without_passed(defaults: dict, passed: set[str]) -> dict:
    """`defaults` for the fields not in `passed`; no step default when only `--num_train_epochs` is given (else the
    default `max_steps` would silently override the epochs)."""
    kept = {k: v for k, v in defaults.items() if k not in passed}
    if "num_train_epochs" in passed and "max_steps" not in passed:
        kept.pop("max_steps", None)
    return kept


def parse_script_args(
    dataclass_types: tuple,
    training_defaults: dict,
    argv: Optional[list[str]] = None,
    description: Optional[str] = None,
    after_parse: Optional[Callable[[tuple, set[str]], None]] = None,
) -> tuple:
    """Parse `argv` (default `sys.argv[1:]`) or a single `.json` file into `dataclass_types` (the last one being
    `TrainingArguments`); `training_defaults` apply to every field the user did not pass, and
    `after_parse(parsed, passed)` may resolve defaults that depend on other values. An unknown flag or JSON key is
    argparse's usage error (exit code 2), as in the scripts that use plain argparse."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, description=description)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        given = json.loads(Path(argv[0]).read_text())
        known = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
        unknown = sorted(set(given) - known)
        if unknown:
            parser.error(f"unrecognized keys in {argv[0]}: {', '.join(unknown)}")
        passed = set(given)
        parsed = parser.parse_dict({**defaults_without_passed(training_defaults, passed), **given})
    else:
        passed = passed_fields(parser, argv)
        parser.set_defaults(**defaults_without_passed(training_defaults, passed))
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True,
                                                              look_for_args_file=False)
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if after_parse is not None:
        after_parse(parsed, passed)
    return tuple(parsed)


# ---------------------------------------------------------------------------------------------------------- ending


def end_distributed_run() -> None:
    """Call last in a training script's `__main__` block, after every output is written.

    Single process: does nothing. Under a launcher (`torchrun`, `accelerate launch`) on gloo (CPU): waits for every
    process, destroys the process group, flushes and leaves with `os._exit(0)`. gloo's worker threads occasionally
    abort Python's finalisation ("terminate called without an active exception", SIGABRT), which would turn a finished
    run into a failed one for the launcher (see docs/distributed.md). Other backends only destroy the process group.
    """
    import os

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    on_gloo = dist.get_backend() == "gloo"
    dist.barrier()
    dist.destroy_process_group()
    if on_gloo:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# ----------------------------------------------------------------------------------------------------------------------
# Voice and channel augmentation, precomputed
# ----------------------------------------------------------------------------------------------------------------------


def _augment_chunk(job):
    clips, sampling_rate, seeds, settings = job
    from mamba_zoo.corpora.voice_augmentation import WaveformAugmenter

    return [WaveformAugmenter(**settings, seed=seed)(clip, sampling_rate) for clip, seed in zip(clips, seeds)]


def augmented_copies(clips, sampling_rate: int, copies: int, seed: int, settings: Optional[dict] = None,
                     num_workers: int = 0, desc: str = "augmenting"):
    """`copies` augmented versions of every clip (`mamba_zoo.corpora.voice_augmentation.WaveformAugmenter`, default settings unless
    `settings`): a list of `copies` lists, each as long as `clips`, float32 arrays of the clips' lengths.

    Computed once before training: a 1 s clip costs about 40 ms, too much to redo every step on 2 cores, so each step
    draws one of the original and its copies instead. Clip `i` of copy `k` has its own augmenter seeded from
    `(seed, k, i)`: the same bytes whatever `num_workers` (processes; 0 = this one)."""
    import multiprocessing

    import numpy as np
    from tqdm.auto import tqdm

    settings = dict(settings or {})
    result = []
    for k in range(copies):
        seeds = [int(np.random.default_rng([seed, k, i]).integers(2**31 - 1)) for i in range(len(clips))]
        chunk = 64
        jobs = [(clips[i:i + chunk], sampling_rate, seeds[i:i + chunk], settings) for i in range(0, len(clips), chunk)]
        out = []
        with tqdm(total=len(clips), desc=f"{desc} (copy {k + 1}/{copies})", leave=False) as bar:
            if num_workers > 0 and len(jobs) > 1:
                context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                      else "spawn")
                with context.Pool(num_workers) as pool:
                    for done in pool.imap(_augment_chunk, jobs):
                        out.extend(done)
                        bar.update(len(done))
            else:
                for job in jobs:
                    out.extend(_augment_chunk(job))
                    bar.update(len(job[0]))
        result.append(out)
    return result


def parse_engines(text: str):
    """The `--engines` flag of the speech recipes: "espeak-ng,festival" (equal shares) or with weights
    "espeak-ng:3,festival:1". Returns `(names, weights or None)`; "" gives `((), None)`."""
    names, weights = [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        names.append(name.strip())
        try:
            weights.append(float(weight) if weight else None)
        except ValueError:
            raise ValueError(f"Bad engine weight in {part!r}: write engine:weight, e.g. 'festival:1'.") from None
    if any(w is not None for w in weights) and any(w is None for w in weights):
        raise ValueError(f"Give a weight to every engine or to none: {text!r}.")
    return tuple(names), (tuple(weights) if weights and weights[0] is not None else None)
