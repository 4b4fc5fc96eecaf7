"""FSDP2 (`torch.distributed.fsdp.fully_shard`) on CPU/gloo with the tiny BlackMamba of ddp_train_tiny.py.

Launched with torchrun by tests/test_distributed.py. It shards each `MambaBlock` and then the root model on a 1-D CPU
device mesh (the wrap that `transformer_layer_cls_to_wrap: ["MambaBlock"]` asks of Trainer/accelerate), trains a few
AdamW steps on the same global batches as ddp_train_tiny.py (rank r takes the r-th contiguous slice of each global
batch; with a world of 1 it is the plain 1-process run), gathers the full state dict and saves it with
`save_pretrained` to `<output_dir>/final`. Writes `<output_dir>/fsdp2.json` on rank 0.

Usage: torchrun --nproc_per_node N fsdp2_loop_tiny.py --output_dir DIR [--steps 4] [--global_batch 4]
       [--kernel_backend auto|cpu|reference]
"""

import argparse
import json
import os

import torch
import torch.distributed as dist

from ddp_train_tiny import TokenDataset, build_model, end_distributed_run
from mamba_zoo.mamba_layers import MambaBlock


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--global_batch", type=int, default=4)
    parser.add_argument("--kernel_backend", default="auto")
    args = parser.parse_args()
    output_dir, steps, global_batch = args.output_dir, args.steps, args.global_batch
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor

    model = build_model(args.kernel_backend)
    model.train()
    mesh = init_device_mesh("cpu", (world,))
    blocks = [m for m in model.modules() if isinstance(m, MambaBlock)]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = [p for p in model.parameters() if isinstance(p, DTensor) and p.to_local().numel() < p.numel()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)

    data = TokenDataset().ids
    per_rank = global_batch // world
    losses = []
    for step in range(steps):
        batch = data[step * global_batch:(step + 1) * global_batch][rank * per_rank:(rank + 1) * per_rank]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()  # FSDP2 reduce-scatters the mean gradient over ranks
        optimizer.step()
        optimizer.zero_grad()
        reported = loss.detach().clone()
        dist.all_reduce(reported)
        losses.append(reported.item() / world)

    model.eval()
    probe = data[:4]
    with torch.no_grad():
        probe_loss = model(input_ids=probe, labels=probe).loss.item()

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        plain = build_model(args.kernel_backend)
        missing, unexpected = plain.load_state_dict(state, strict=False)
        plain.save_pretrained(os.path.join(output_dir, "final"))
        info = {
            "losses": losses, "world_size": world, "threads": torch.get_num_threads(), "probe_loss": probe_loss,
            "mamba_blocks": len(blocks), "wrapped_mamba_blocks": sum(isinstance(b, FSDPModule) for b in blocks),
            "sharded_params": len(sharded), "params": sum(1 for _ in model.parameters()),
            "missing": list(missing), "unexpected": list(unexpected),
        }
        with open(os.path.join(output_dir, "fsdp2.json"), "w") as f:
            json.dump(info, f)
    end_distributed_run()


if __name__ == "__main__":
    main()
