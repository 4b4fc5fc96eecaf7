"""Tiny FSDP Trainer run used by tests/test_distributed.py (torchrun, gloo on CPU).

Same model, data and order as ddp_train_tiny.py; FSDP is switched on by the ordinary TrainingArguments flags
(`--fsdp --fsdp_config cfg.json`, with `transformer_layer_cls_to_wrap: ["MambaBlock"]` in the json). After training it
saves the full model with `trainer.save_model(<output_dir>/final)` and writes, on the main process,
`<output_dir>/fsdp.json`: the logged losses, how many `MambaBlock`s FSDP wrapped, how many parameters are sharded
(DTensor with a local shard smaller than the full tensor) and the loss of the trained (still sharded) model on a fixed
batch, so that the test can check the saved checkpoint against it. It also records accelerate's `distributed_type`:
on CPU (`--use_cpu`, gloo) accelerate 1.x builds no FSDP plugin and Trainer trains with DDP instead.

The selective scan runs on the PyTorch "reference" backend: the numba CPU kernels hand numba `Tensor.numpy()` views
of parameters, which makes their storage non-resizable, and FSDP2 frees unsharded parameters with `resize_(0)`.
"""

import json
import os
import sys

import accelerate
import torch
from transformers import HfArgumentParser, TrainingArguments

from ddp_train_tiny import SequentialTrainer, TokenDataset, build_model, end_distributed_run
from mamba_zoo.mamba_layers import MambaBlock


def _fsdp_report(model: torch.nn.Module) -> dict:
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    blocks = [m for m in model.modules() if isinstance(m, MambaBlock)]
    sharded = [p for p in model.parameters() if isinstance(p, DTensor) and p.to_local().numel() < p.numel()]
    return {
        "mamba_blocks": len(blocks),
        "wrapped_mamba_blocks": sum(isinstance(m, FSDPModule) for m in blocks),
        "root_wrapped": isinstance(model, FSDPModule),
        "sharded_params": len(sharded),
        "params": sum(1 for _ in model.parameters()),
    }


def main():
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(sys.argv[1:])
    model = build_model(kernel_backend="reference")
    dataset = TokenDataset()
    trainer = SequentialTrainer(model=model, args=args, train_dataset=dataset)
    trainer.train()

    wrapped = trainer.model  # Trainer keeps the FSDP-prepared module here
    report = _fsdp_report(wrapped)
    probe = dataset.ids[:4]
    wrapped.eval()
    with torch.no_grad():  # every rank runs the same forward: FSDP all-gathers the shards
        probe_loss = wrapped(input_ids=probe, labels=probe).loss.item()

    trainer.save_model(os.path.join(args.output_dir, "final"))  # collective: gathers the full state dict
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        info = {"losses": losses, "world_size": args.world_size, "threads": torch.get_num_threads(),
                "probe_loss": probe_loss, "fsdp_enabled": trainer.is_fsdp_enabled,
                "distributed_type": str(trainer.accelerator.distributed_type.value),
                "accelerate": accelerate.__version__,
                "fsdp_version": args.fsdp_plugin_args["fsdp_version"], **report}
        with open(os.path.join(args.output_dir, "fsdp.json"), "w") as f:
            json.dump(info, f)


if __name__ == "__main__":
    main()
    end_distributed_run()
