# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Command-line parsing shared by the training scripts: transformers' `HfArgumentParser` over the script's own
argument dataclasses plus `TrainingArguments`, with the script's defaults for the Trainer flags the user does not pass
(transformers' own defaults — `learning_rate=5e-5`, a required `--output_dir` — rarely suit a small CPU recipe)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Optional


def rename_aliases(argv: list[str], aliases: dict[str, str]) -> list[str]:
    """`--old v` / `--old=v` -> `--new v` / `--new=v` for every old flag name in `aliases`."""
    out = []
    for token in argv:
        name, sep, value = token.partition("=")
        out.append(aliases[name] + sep + value if name in aliases else token)
    return out


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
    aliases: Optional[dict[str, str]] = None,
    description: Optional[str] = None,
    after_parse: Optional[Callable[[tuple, set[str]], None]] = None,
) -> tuple:
    """Parse `argv` (default `sys.argv[1:]`) or a single `.json` file into `dataclass_types` (the last one being
    `TrainingArguments`); `training_defaults` apply to every field the user did not pass, `aliases` maps old flag names
    to current ones, and `after_parse(parsed, passed)` may resolve defaults that depend on other values."""
    from transformers import HfArgumentParser

    aliases = aliases or {}
    parser = HfArgumentParser(dataclass_types, description=description)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        given = json.loads(Path(argv[0]).read_text())
        given = {aliases.get("--" + k, "--" + k)[2:]: v for k, v in given.items()}
        passed = set(given)
        parsed = parser.parse_dict({**defaults_without_passed(training_defaults, passed), **given})
    else:
        argv = rename_aliases(argv, aliases)
        passed = passed_fields(parser, argv)
        parser.set_defaults(**defaults_without_passed(training_defaults, passed))
        parsed = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    if after_parse is not None:
        after_parse(parsed, passed)
    return tuple(parsed)


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
