#!/usr/bin/env python
# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Train (or LoRA-fine-tune) a BlackMamba causal LM with `Trainer` and report validation perplexity and expert load.

Defaults: the embedded text corpus (`mamba_zoo.corpora.load_text_corpus`: grammar sentences, arithmetic, digit strings),
a byte-pair tokenizer trained on its training split (no hub), texts packed into blocks of `--block_size` tokens.
`--corpus_kind facts --lexicon_size N` trains on statements of fixed facts about N pseudo-words instead ("the vabonu
lives near the river."): a knowledge-bound corpus, where capacity (the MoE's extra experts) can pay off.

    python training/train_causal_lm.py --arch moe   --output_dir outputs/blackmamba-moe
    python training/train_causal_lm.py --arch dense --output_dir outputs/blackmamba-dense
    python training/train_causal_lm.py --arch mamba --output_dir outputs/mamba-dense
    python training/train_causal_lm.py --arch moe --freeze_router --corpus_kind facts --lexicon_size 2000 ...
    python training/train_causal_lm.py --lora --init_from outputs/blackmamba-moe --output_dir outputs/blackmamba-lora
    python training/train_causal_lm.py --per_device_train_batch_size 32 --learning_rate 3e-3 --max_steps 500
    python training/train_causal_lm.py args.json           # every flag below as one JSON object
    torchrun --nproc_per_node 2 training/train_causal_lm.py --output_dir outputs/blackmamba-ddp ...

Flags: transformers' `TrainingArguments` (`--output_dir`, `--max_steps`, `--num_train_epochs`, `--learning_rate`,
`--per_device_train_batch_size`, `--warmup_steps`, `--seed`, `--use_cpu`, `--bf16`, `--fsdp`, `--push_to_hub`, ...)
plus the `ModelArguments`, `DataArguments` and `RunArguments` below (HfArgumentParser, as in transformers' example
scripts), so the script runs unchanged under `torchrun` / `accelerate launch`. Where this script's defaults differ from
`TrainingArguments`' own, a flag you do not pass takes the script's value (`TRAINING_DEFAULTS`):

    --output_dir outputs/blackmamba-text  --per_device_train_batch_size 16  --per_device_eval_batch_size 32
    --learning_rate 2e-3  --max_steps 2000  --warmup_steps 50  --lr_scheduler_type cosine  --weight_decay 0.01
    --logging_steps 50  --save_strategy no  --seed 0  --remove_unused_columns false  --disable_tqdm true

`--num_train_epochs` without `--max_steps` trains for that many epochs (the 2000-step default is then not applied).
`--per_device_eval_batch_size` is also the batch of the perplexity evaluation. `--max_train_minutes` (opt-in) stops
training at a wall-clock budget and records it in the metrics (`stopped_by_time_budget`). The device is
`TrainingArguments`' choice (CPU on a machine without accelerator; `--use_cpu` forces it); the thread count is torch's /
the launcher's unless `--threads` is given.

Architectures at the same active (per-token) parameter count:
- `moe`: BlackMamba, mamba and top-1 MoE layers alternating (`--num_experts` experts of width `--ffn_hidden_size`),
  trained with arg-max routing and a load-balancing loss of weight 0.01 (`--routing sinkhorn --router_aux_loss_coef 0`
  trains with the released code's Sinkhorn assignment instead);
- `dense`: the same stack with one dense MLP in place of each MoE layer (identical active parameters minus routers);
- `mamba`: a pure Mamba stack, its depth chosen so that its parameter count matches the MoE model's active count.

Perplexity = exp(mean next-token cross-entropy over the validation split), without the router's auxiliary loss.
Also reported: tokens per expert, routing churn (the share of a fixed validation batch's tokens that changed expert
since the previous logging step, per MoE layer) and, on the facts corpus, fact recall (`evaluate_fact_recall`).
`--freeze_router` trains the MoE with its routers fixed at their random initialisation (see the model card).
Metrics go to `OUTPUT_DIR/metrics.json`; model and tokenizer are saved (`Trainer.save_model`) for
`pipeline("text-generation", ...)`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mamba_zoo  # noqa: E402  (registers the Auto* classes)
from mamba_zoo import BlackMambaConfig, BlackMambaForCausalLM  # noqa: E402
from common import TrainingBudgetCallback, end_distributed_run, max_train_minutes_field, parse_script_args  # noqa: E402

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
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "active": total - inactive, "trainable": trainable}


def freeze_routers(model: BlackMambaForCausalLM) -> None:
    """Stop training every MoE router (`requires_grad=False`), so each token keeps the expert a fixed random
    projection of its hidden state picks, as in hash-layer routing.

    Why: a learned top-1 router keeps re-assigning tokens while the learning rate is high (in a 1500-step CPU run,
    21-77% of the tokens changed expert between checks 100 steps apart up to step 600), so what an expert has stored
    about a token is lost to another expert. The inference computation is unchanged (sigmoid scores, top-1, output
    scaled by the score)."""
    frozen = [p for name, p in model.named_parameters() if name.split(".")[-2] == "router"]
    if not frozen:
        raise ValueError("--freeze_router needs MoE layers: use --arch moe (this model has no router).")
    for parameter in frozen:
        parameter.requires_grad_(False)


def build_config(args, vocab_size: int) -> BlackMambaConfig:
    common = dict(
        vocab_size=vocab_size, hidden_size=args.hidden_size, state_size=args.state_size,
        ffn_hidden_size=args.ffn_hidden_size, num_experts=args.num_experts, hidden_act=args.hidden_act,
        router_aux_loss_coef=args.router_aux_loss_coef, output_router_logits=args.router_aux_loss_coef > 0,
        sinkhorn_in_training=args.routing == "sinkhorn", pad_token_id=1, bos_token_id=0, eos_token_id=0,
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


@contextmanager
def evaluating(model):
    """`with evaluating(model) as base:` the model itself (its PEFT base model for a LoRA model) in eval mode, put back
    in the train/eval mode it had when the block ends."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = base.training
    base.eval()
    try:
        yield base
    finally:
        base.train(was_training)


@torch.no_grad()
def evaluate_perplexity(model, dataset: PackedBlocks, batch_size: int) -> dict:
    """Token-weighted next-token cross-entropy over `dataset` (no auxiliary loss) and the expert load it caused."""
    total_loss, total_tokens, load = 0.0, 0, None
    with evaluating(model) as base:
        for start in range(0, len(dataset), batch_size):
            ids = dataset.blocks[start:start + batch_size].to(base.device)
            logits = base(ids, use_cache=False, output_router_logits=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total_loss += loss.item()
            total_tokens += ids[:, 1:].numel()
            batch_load = base.expert_load()
            load = batch_load if load is None else load + batch_load
    mean = total_loss / total_tokens
    result = {"loss": mean, "perplexity": math.exp(mean)}
    if load is not None and load.numel():
        result["tokens_per_expert"] = load.tolist()
        share = load.float() / load.sum(-1, keepdim=True)
        result["max_expert_share"] = share.max().item()
    return result


@torch.no_grad()
def evaluate_fact_recall(model, tokenizer, texts: list[str], batch_size: int, max_texts: int = 2000) -> dict:
    """How much of the facts corpus' knowledge the model holds, on the fact statements among `texts` (at most
    `max_texts`) whose answer follows its entity (the home in "the X lives near the HOME.", the adjective in "the X is
    ADJ."; `mamba_zoo.corpora.vocabulary.fact_answer_span`):
    - `answer_loss`: next-token cross-entropy summed over the answer's tokens, in nats per answer (about ln 30 = 3.4
      for a home the model does not know, 0 for one it recalls with certainty);
    - `answer_accuracy`: the fraction of answers whose every token is the model's arg-max (teacher-forced).
    The answer's tokens run from the space before it to the final "." (byte-level BPE may give that space its own token,
    whose choice already says something about the answer). Each statement follows an eos token, as in the packed
    blocks."""
    from mamba_zoo.corpora.vocabulary import fact_answer_span

    items = [(text, span) for text in texts[:max_texts] if (span := fact_answer_span(text)) is not None]
    total_loss, total_tokens, correct = 0.0, 0, 0
    with evaluating(model) as base:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            encoded = tokenizer([text for text, _ in batch], add_special_tokens=False, return_offsets_mapping=True)
            length = 1 + max(len(ids) for ids in encoded["input_ids"])
            ids = torch.full((len(batch), length), tokenizer.pad_token_id, dtype=torch.long)
            answer = torch.zeros((len(batch), length), dtype=torch.bool)
            for row, ((_, (begin, end)), token_ids, offsets) in enumerate(
                    zip(batch, encoded["input_ids"], encoded["offset_mapping"])):
                ids[row, 0] = tokenizer.eos_token_id
                ids[row, 1:1 + len(token_ids)] = torch.tensor(token_ids)
                # a token is the answer's by its last character: the space before the answer, or the answer
                for position, (_, token_end) in enumerate(offsets):
                    answer[row, 1 + position] = begin - 1 <= token_end - 1 < end
            logits = base(ids.to(base.device), use_cache=False, output_router_logits=False).logits
            logits = logits[:, :-1].float().cpu()
            targets, mask = ids[:, 1:], answer[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            total_loss += nll[mask].sum().item()
            total_tokens += int(mask.sum())
            hit = (logits.argmax(-1) == targets) | ~mask
            correct += int(hit.all(dim=1).sum())
    if not items:
        return {"num_answers": 0}
    return {"num_answers": len(items), "answer_loss": total_loss / len(items), "answer_tokens": total_tokens,
            "answer_accuracy": correct / len(items)}


class RoutingChurn:
    """How settled top-1 routing is: every `every` steps (`TrainerCallback`), route a fixed batch `blocks`
    `(batch, block_size)` in eval mode and record, per MoE layer, the fraction of its tokens whose expert changed since
    the previous check. `history` is `[{"step": s, "changed": [fraction per MoE layer]}, ...]`."""

    def __init__(self, blocks: torch.Tensor, every: int):
        from transformers import TrainerCallback

        self.blocks, self.every, self.history, self.previous = blocks, max(1, every), [], None
        owner = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if model is not None and state.global_step % owner.every == 0:
                    owner.check(model, state.global_step)

        self.callback = Callback()

    @torch.no_grad()
    def assignments(self, model) -> list[torch.Tensor]:
        with evaluating(model) as base:
            logits = base(self.blocks.to(base.device), use_cache=False, output_router_logits=True).router_logits
        return [layer_logits.argmax(-1).cpu() for layer_logits in (logits or ())]

    def check(self, model, step: int):
        current = self.assignments(model)
        if self.previous is not None and current:
            changed = [round((now != before).float().mean().item(), 4) for now, before in zip(current, self.previous)]
            self.history.append({"step": step, "changed": changed})
        self.previous = current


# ---------------------------------------------------------------------------------------------------------- main


@dataclass
class ModelArguments:
    arch: str = field(default="moe", metadata={"choices": ["moe", "dense", "mamba"],
                                               "help": "moe (BlackMamba), dense (MLP for MoE) or mamba (pure stack)"})
    init_from: Optional[str] = field(default=None,
                                     metadata={"help": "a saved checkpoint to continue from (needed for --lora)"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters on every projection, router, experts"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank (alpha = 2 x rank)"})
    hidden_size: int = field(default=128, metadata={"help": "model width"})
    num_layers: int = field(default=8, metadata={"help": "blocks of the moe/dense stack (mamba + MLP pairs)"})
    state_size: int = field(default=16, metadata={"help": "SSM state size"})
    ffn_hidden_size: int = field(default=256, metadata={"help": "width of each expert / dense MLP"})
    num_experts: int = field(default=8, metadata={"help": "experts per MoE layer"})
    hidden_act: str = field(default="gelu", metadata={"help": "MLP activation"})
    routing: str = field(default="argmax", metadata={
        "choices": ["argmax", "sinkhorn"],
        "help": "how training assigns tokens to experts: argmax of the router scores, as inference does, or sinkhorn "
                "(balanced, as the released training code; inference still routes by arg-max, a mismatch that cost "
                "small models 9 percent in perplexity, see the model card)"})
    router_aux_loss_coef: float = field(default=0.01, metadata={"help": "load-balancing loss weight (0: off)"})
    freeze_router: bool = field(default=False, metadata={
        "help": "keep every router at its random initialisation (stable routing, as hash layers; see the model card)"})


@dataclass
class DataArguments:
    tokenizer: str = field(default="bpe", metadata={"choices": ["bpe", "char"],
                                                    "help": "byte-level BPE or character tokenizer, trained locally"})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary size"})
    num_sentences: int = field(default=20000, metadata={"help": "size of the embedded text corpus"})
    corpus_kind: str = field(default="mixed", metadata={"choices": ["mixed", "sentences", "arithmetic", "facts"],
                                                        "help": "which texts of the embedded corpus"})
    lexicon_size: int = field(default=0, metadata={"help": "replace the nouns by this many pseudo-words (0: off)"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed training block"})


@dataclass
class RunArguments:
    max_train_minutes: Optional[float] = max_train_minutes_field()
    threads: Optional[int] = field(
        default=None, metadata={"help": "torch intra-op threads (default: torch's / the launcher's choice)"})


# Where this script's defaults differ from TrainingArguments' own; applied to every flag the user does not pass.
TRAINING_DEFAULTS = dict(
    output_dir="outputs/blackmamba-text", per_device_train_batch_size=16, per_device_eval_batch_size=32,
    learning_rate=2e-3, max_steps=2000, warmup_steps=50, lr_scheduler_type="cosine", weight_decay=0.01,
    logging_steps=50, save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0,
    remove_unused_columns=False, disable_tqdm=True,
)


def parse_args(argv=None):
    """`(model_args, data_args, run_args, training_args)` from `argv` (default: sys.argv[1:]) or one `.json` file."""
    from transformers import TrainingArguments

    return parse_script_args((ModelArguments, DataArguments, RunArguments, TrainingArguments), TRAINING_DEFAULTS,
                             argv, __doc__.split("\n\n")[0])


def main(argv=None):
    model_args, data_args, run_args, training_args = parse_args(argv)
    from transformers import AutoTokenizer, Trainer, set_seed

    if run_args.threads:
        torch.set_num_threads(run_args.threads)
    set_seed(training_args.seed)
    texts = load_texts(data_args.num_sentences, training_args.seed, data_args.corpus_kind, data_args.lexicon_size)
    if model_args.init_from:
        tokenizer = AutoTokenizer.from_pretrained(model_args.init_from)
        model = BlackMambaForCausalLM.from_pretrained(model_args.init_from)
    else:
        tokenizer = build_tokenizer(texts["train"], data_args.vocab_size, data_args.tokenizer)
        model = BlackMambaForCausalLM(build_config(model_args, len(tokenizer)))
    if model_args.freeze_router:
        freeze_routers(model)
    if model_args.lora:
        if not model_args.init_from:
            raise ValueError("--lora fine-tunes a trained model: pass --init_from.")
        import peft

        targets = ["in_proj", "x_proj", "dt_proj", "out_proj", "router", "linear_fc1", "linear_fc2"]
        if model_args.freeze_router:
            targets.remove("router")
        present = {name.split(".")[-1] for name, _ in model.named_modules()}
        model = peft.get_peft_model(model, peft.LoraConfig(r=model_args.lora_rank, lora_alpha=2 * model_args.lora_rank,
                                                           target_modules=[t for t in targets if t in present]))
        model.print_trainable_parameters()
    train_set = PackedBlocks(texts["train"], tokenizer, data_args.block_size)
    valid_set = PackedBlocks(texts["validation"], tokenizer, data_args.block_size)
    params = count_parameters(model.get_base_model() if model_args.lora else model)
    print(f"arch={model_args.arch} layers={model.config.layer_types} params total={params['total']:,} "
          f"active={params['active']:,}; train {train_set.num_tokens:,} tokens, validation {valid_set.num_tokens:,}")

    eval_batch_size = training_args.per_device_eval_batch_size
    before = evaluate_perplexity(model, valid_set, eval_batch_size)
    budget = TrainingBudgetCallback(run_args.max_train_minutes)
    callbacks = [budget]
    churn = None
    if "moe" in model.config.layer_types:
        every = training_args.logging_steps if training_args.logging_steps >= 1 else 50  # a ratio: every 50 steps
        churn = RoutingChurn(valid_set.blocks[:8], int(every))
        churn.check(model, 0)
        callbacks.append(churn.callback)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, callbacks=callbacks,
                      processing_class=tokenizer)
    start = time.time()
    result = trainer.train()
    train_seconds = time.time() - start
    after = evaluate_perplexity(model, valid_set, eval_batch_size)
    if data_args.corpus_kind == "facts":
        after["facts"] = evaluate_fact_recall(model, tokenizer, texts["validation"], eval_batch_size)

    global_batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                    * training_args.world_size)
    metrics = {
        "arch": model_args.arch, "lora": model_args.lora, "router_frozen": model_args.freeze_router,
        "layer_types": model.config.layer_types,
        "parameters": params, "steps": result.global_step, "train_seconds": round(train_seconds, 1),
        "train_tokens_seen": result.global_step * global_batch * data_args.block_size,
        "validation_before": before, "validation": after, **budget.summary(),
    }
    if churn is not None:
        metrics["routing_churn"] = churn.history
    out = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        print(json.dumps(metrics, indent=1))
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    if model_args.lora:
        trainer.model = model.merge_and_unload()  # the saved (and pushed) checkpoint is the merged model
    trainer.save_model(str(out))  # model + tokenizer on the main process (gathered under FSDP); pushes if --push_to_hub
    return metrics


if __name__ == "__main__":
    main()
    end_distributed_run()  # under torchrun on CPU: leave without gloo's exit-time abort
