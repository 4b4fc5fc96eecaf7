#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Train (or LoRA-fine-tune) a BlackMamba causal LM with `Trainer` and report validation perplexity and expert load.

Defaults: the embedded text corpus (`mamba_zoo.corpora.load_text_corpus`: grammar sentences, arithmetic, digit strings),
a byte-pair tokenizer trained on its training split (no hub), texts packed into blocks of `--block_size` tokens.

    python training/train_causal_lm.py --arch moe   --max_minutes 4 --output_dir outputs/blackmamba-moe
    python training/train_causal_lm.py --arch dense --max_minutes 4 --output_dir outputs/blackmamba-dense
    python training/train_causal_lm.py --arch mamba --max_minutes 4 --output_dir outputs/mamba-dense
    python training/train_causal_lm.py --lora --init_from outputs/blackmamba-moe --output_dir outputs/blackmamba-lora

Architectures at the same active (per-token) parameter count:
- `moe`: BlackMamba, mamba and top-1 MoE layers alternating (`--num_experts` experts of width `--ffn_hidden_size`);
- `dense`: the same stack with one dense MLP in place of each MoE layer (identical active parameters minus routers);
- `mamba`: a pure Mamba stack, its depth chosen so that its parameter count matches the MoE model's active count.

Perplexity = exp(mean next-token cross-entropy over the validation split), without the router's auxiliary loss.
Metrics go to `OUTPUT_DIR/metrics.json`; model and tokenizer are saved for `pipeline("text-generation", ...)`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mamba_zoo  # noqa: E402  (registers the Auto* classes)
from mamba_zoo import BlackMambaConfig, BlackMambaForCausalLM  # noqa: E402

FALLBACK_TEXT = (
    "the quick brown fox jumps over the lazy dog. a small cat sat near the old house. "
    "three plus four is seven. nine minus two is seven. the red boat moved slowly past the bridge. "
) * 200


# ---------------------------------------------------------------------------------------------------------- data


def pseudo_words(count: int, seed: int) -> list[str]:
    """`count` distinct pronounceable letter strings (2-4 consonant-vowel syllables): a lexicon a model can only
    predict by memorising it, so language-model quality depends on capacity."""
    import random

    rng = random.Random(seed)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words = set()
    while len(words) < count:
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def load_texts(num_sentences: int, seed: int, kind: str = "mixed", lexicon_size: int = 0) -> dict[str, list[str]]:
    """Train / validation / test sentences of the embedded corpus (a built-in paragraph if it is unavailable).
    With `lexicon_size`, the grammar's nouns are that many pseudo-words."""
    try:
        from mamba_zoo.corpora import load_text_corpus

        words = pseudo_words(lexicon_size, seed) if lexicon_size else None
        corpus = load_text_corpus(num_sentences=num_sentences, seed=seed, kind=kind, words=words)
        return {split: list(corpus[split]["text"]) for split in ("train", "validation", "test")}
    except ImportError:
        sentences = [s.strip() + "." for s in FALLBACK_TEXT.split(".") if s.strip()]
        n = max(1, len(sentences) // 20)
        return {"train": sentences[2 * n:], "validation": sentences[:n], "test": sentences[n:2 * n]}


def build_tokenizer(texts: list[str], vocab_size: int, kind: str = "bpe"):
    """A byte-pair (or character) tokenizer trained locally, wrapped as `PreTrainedTokenizerFast`.
    Id 0 = `<|endoftext|>` (bos/eos), id 1 = `<|padding|>`, as in GPT-NeoX."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|padding|>"]
    if kind == "char":
        chars = sorted(set("".join(texts)))
        backend = Tokenizer(models.WordLevel({**{s: i for i, s in enumerate(special)},
                                              **{c: i + 2 for i, c in enumerate(chars)}}, unk_token="<|padding|>"))
        backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        backend.decoder = decoders.Fuse()
    else:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|padding|>", unk_token="<|padding|>")


class PackedBlocks(torch.utils.data.Dataset):
    """All texts tokenized, joined with eos, cut into `(block_size,)` blocks of input_ids (labels = input_ids)."""

    def __init__(self, texts: list[str], tokenizer, block_size: int):
        ids = []
        for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            ids.extend(encoded + [tokenizer.eos_token_id])
        usable = (len(ids) // block_size) * block_size
        if usable == 0:
            raise ValueError(f"Only {len(ids)} tokens: fewer than one block of {block_size}.")
        self.blocks = torch.tensor(ids[:usable]).view(-1, block_size)
        self.num_tokens = usable

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, index):
        return {"input_ids": self.blocks[index], "labels": self.blocks[index]}


# ---------------------------------------------------------------------------------------------------------- models


def count_parameters(model: BlackMambaForCausalLM) -> dict[str, int]:
    """Total and active (per-token) parameters; tied embeddings counted once."""
    total = sum(p.numel() for p in model.parameters())
    config = model.config
    inactive = 0
    for layer_type, layer in zip(config.layer_types, model.backbone.layers):
        if layer_type == "moe":
            expert = sum(p.numel() for p in layer.mixer.local_experts[0].parameters())
            inactive += (config.num_experts - 1) * expert
    return {"total": total, "active": total - inactive}


def build_config(args, vocab_size: int) -> BlackMambaConfig:
    common = dict(
        vocab_size=vocab_size, hidden_size=args.hidden_size, state_size=args.state_size,
        ffn_hidden_size=args.ffn_hidden_size, num_experts=args.num_experts, hidden_act=args.hidden_act,
        router_aux_loss_coef=args.router_aux_loss_coef, output_router_logits=args.router_aux_loss_coef > 0,
        sinkhorn_in_training=not args.no_sinkhorn, pad_token_id=1, bos_token_id=0, eos_token_id=0,
    )
    pairs = args.num_layers // 2
    if args.arch == "moe":
        return BlackMambaConfig(layer_types=["mamba", "moe"] * pairs, **common)
    if args.arch == "dense":
        return BlackMambaConfig(layer_types=["mamba", "mlp"] * pairs, **common)
    # pure Mamba: as many mamba layers as fit the MoE model's active parameter count
    reference = count_parameters(BlackMambaForCausalLM(BlackMambaConfig(layer_types=["mamba", "moe"] * pairs,
                                                                        **common)))["active"]
    best = None
    for depth in range(1, 8 * args.num_layers):
        candidate = BlackMambaConfig(layer_types=["mamba"] * depth, **common)
        active = count_parameters(BlackMambaForCausalLM(candidate))["active"]
        if best is None or abs(active - reference) < abs(best[1] - reference):
            best = (candidate, active)
        if active > reference:
            break
    return best[0]


# ---------------------------------------------------------------------------------------------------------- metrics


@torch.no_grad()
def evaluate_perplexity(model, dataset: PackedBlocks, batch_size: int) -> dict:
    """Token-weighted next-token cross-entropy over `dataset` (no auxiliary loss) and the expert load it caused."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = base.training
    base.eval()
    total_loss, total_tokens, load = 0.0, 0, None
    for start in range(0, len(dataset), batch_size):
        ids = dataset.blocks[start:start + batch_size]
        logits = base(ids, use_cache=False, output_router_logits=False).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total_loss += loss.item()
        total_tokens += ids[:, 1:].numel()
        batch_load = base.expert_load()
        load = batch_load if load is None else load + batch_load
    base.train(was_training)
    mean = total_loss / total_tokens
    result = {"loss": mean, "perplexity": math.exp(mean)}
    if load is not None and load.numel():
        result["tokens_per_expert"] = load.tolist()
        share = load.float() / load.sum(-1, keepdim=True)
        result["max_expert_share"] = share.max().item()
    return result


def time_budget_callback(max_minutes: float):
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            if time.time() - self.start > 60 * max_minutes:
                control.should_training_stop = True
            return control

    return StopAfter()


# ---------------------------------------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["moe", "dense", "mamba"], default="moe")
    parser.add_argument("--output_dir", default="outputs/blackmamba-text")
    parser.add_argument("--init_from", default=None, help="a saved checkpoint to continue from (needed for --lora)")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters on every projection, router, experts")
    parser.add_argument("--lora_rank", type=int, default=8)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=8, help="blocks of the moe/dense stack (mamba + MLP pairs)")
    parser.add_argument("--state_size", type=int, default=16)
    parser.add_argument("--ffn_hidden_size", type=int, default=256)
    parser.add_argument("--num_experts", type=int, default=8)
    parser.add_argument("--hidden_act", default="gelu")
    parser.add_argument("--router_aux_loss_coef", type=float, default=0.0)
    parser.add_argument("--no_sinkhorn", action="store_true", help="arg-max routing in training too")
    parser.add_argument("--tokenizer", choices=["bpe", "char"], default="bpe")
    parser.add_argument("--vocab_size", type=int, default=512)
    parser.add_argument("--num_sentences", type=int, default=20000)
    parser.add_argument("--corpus_kind", choices=["mixed", "sentences", "arithmetic"], default="mixed")
    parser.add_argument("--lexicon_size", type=int, default=0, help="replace the nouns by this many pseudo-words")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--max_steps", type=int, default=2000)
    parser.add_argument("--max_minutes", type=float, default=None, help="stop training after this wall time")
    parser.add_argument("--warmup_steps", type=int, default=50)
    parser.add_argument("--eval_batch_size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoTokenizer, Trainer, TrainingArguments, set_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    texts = load_texts(args.num_sentences, args.seed, args.corpus_kind, args.lexicon_size)
    if args.init_from:
        tokenizer = AutoTokenizer.from_pretrained(args.init_from)
        model = BlackMambaForCausalLM.from_pretrained(args.init_from)
    else:
        tokenizer = build_tokenizer(texts["train"], args.vocab_size, args.tokenizer)
        model = BlackMambaForCausalLM(build_config(args, len(tokenizer)))
    if args.lora:
        if not args.init_from:
            raise ValueError("--lora fine-tunes a trained model: pass --init_from.")
        import peft

        targets = ["in_proj", "x_proj", "dt_proj", "out_proj", "router", "linear_fc1", "linear_fc2"]
        present = {name.split(".")[-1] for name, _ in model.named_modules()}
        model = peft.get_peft_model(model, peft.LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                           target_modules=[t for t in targets if t in present]))
        model.print_trainable_parameters()
    train_set = PackedBlocks(texts["train"], tokenizer, args.block_size)
    valid_set = PackedBlocks(texts["validation"], tokenizer, args.block_size)
    params = count_parameters(model.get_base_model() if args.lora else model)
    print(f"arch={args.arch} layers={model.config.layer_types} params total={params['total']:,} "
          f"active={params['active']:,}; train {train_set.num_tokens:,} tokens, validation {valid_set.num_tokens:,}")

    before = evaluate_perplexity(model, valid_set, args.eval_batch_size)
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        max_steps=args.max_steps, warmup_steps=args.warmup_steps, lr_scheduler_type="cosine", weight_decay=0.01,
        logging_steps=50, save_strategy="no", report_to=[], seed=args.seed, use_cpu=True,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )
    callbacks = [time_budget_callback(args.max_minutes)] if args.max_minutes else []
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, callbacks=callbacks)
    start = time.time()
    result = trainer.train()
    train_seconds = time.time() - start
    after = evaluate_perplexity(model, valid_set, args.eval_batch_size)

    metrics = {
        "arch": args.arch, "lora": args.lora, "layer_types": model.config.layer_types,
        "parameters": params, "steps": result.global_step, "train_seconds": round(train_seconds, 1),
        "train_tokens_seen": result.global_step * args.batch_size * args.block_size,
        "validation_before": before, "validation": after,
    }
    print(json.dumps(metrics, indent=1))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    to_save = model.merge_and_unload() if args.lora else model
    to_save.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return metrics


if __name__ == "__main__":
    main()
