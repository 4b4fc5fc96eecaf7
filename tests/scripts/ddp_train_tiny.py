"""Tiny Trainer run used by tests/test_distributed.py, launched by torchrun or `accelerate launch` (1 or 2 processes).

Writes the logged training losses (one per step) to `<output_dir>/losses.json` on the main process.
All transformers `TrainingArguments` flags are accepted (HfArgumentParser), as in every training script of the zoo.
"""

import json
import os
import sys

import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import HfArgumentParser, Trainer, TrainingArguments

from mamba_zoo import BlackMambaConfig, BlackMambaForCausalLM

# the training scripts' own ending (on gloo: leave with os._exit, past gloo's occasional exit-time abort); the FSDP test
# scripts import it from here too
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "training"))
from common import end_distributed_run  # noqa: E402


class TokenDataset(Dataset):
    def __init__(self, size=32, length=24, vocab=61, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, vocab, (size, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class SequentialTrainer(Trainer):
    """Sequential order, so that 1 process x batch 4 and 2 processes x batch 2 see the same global batches."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def build_model(kernel_backend: str = "auto") -> BlackMambaForCausalLM:
    """The tiny seeded BlackMamba (4 `MambaBlock`s, MoE) that every launcher test trains."""
    torch.manual_seed(0)
    config = BlackMambaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=4, state_size=8, ffn_hidden_size=40,
                              num_experts=4, sinkhorn_in_training=False, pad_token_id=1, bos_token_id=0, eos_token_id=0,
                              kernel_backend=kernel_backend)
    return BlackMambaForCausalLM(config)


def main():
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(sys.argv[1:])
    model = build_model()
    trainer = SequentialTrainer(model=model, args=args, train_dataset=TokenDataset())
    trainer.train()
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        info = {"losses": losses, "world_size": args.world_size, "threads": torch.get_num_threads()}
        with open(os.path.join(args.output_dir, "losses.json"), "w") as f:
            json.dump(info, f)


if __name__ == "__main__":
    main()
    end_distributed_run()
