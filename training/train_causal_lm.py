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
Metrics go to `OUTPUT_DIR/metrics.json` (with `data`: the source, and for map-style data the texts and blocks of
each split); model and tokenizer are saved (`Trainer.save_model`) for `pipeline("text-generation", ...)`.

Your own data (flags of transformers' `run_clm.py`; without them, the embedded corpus, which takes the same path as a
`DatasetDict` with a `text` column). Texts come from `--text_column_name` (default `text`); the byte-pair tokenizer
is trained on the training split's texts (`--tokenizer_train_samples N`: its first N; with `--streaming` the default is
the first 10000) unless `--tokenizer_name` loads one (`AutoTokenizer`: a local folder or the Hub cache). Map-style data
is tokenized and packed into `--block_size` blocks by `datasets.Dataset.map` (written to datasets' cache, never held
as one list); a stream is packed on the fly and, having no length, needs `--max_steps` (the 2000-step default does
not apply to it). Without an evaluation split, validation is the first
`--validation_split_percentage` percent of the training texts (a stream: its first `--max_eval_samples`, default 1000).

    python training/train_causal_lm.py --train_file train.txt --validation_file valid.txt ...  # .txt: one text a line
    python training/train_causal_lm.py --train_file train.jsonl --text_column_name content ...  # .json/.jsonl/.csv
    python training/train_causal_lm.py --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 ...
    HF_HUB_OFFLINE=1 python training/train_causal_lm.py --dataset_name org/name ...  # from the datasets cache
    python training/train_causal_lm.py --dataset_path my_texts/ ...  # a DatasetDict.save_to_disk folder
    python training/train_causal_lm.py --dataset_name org/big --streaming --max_steps 5000 ...  # needs --max_steps
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mamba_zoo  # noqa: E402  (registers the Auto* classes)
from mamba_zoo import BlackMambaConfig, BlackMambaForCausalLM  # noqa: E402
from common import TrainingBudgetCallback, end_distributed_run, max_train_minutes_field, parse_script_args  # noqa: E402
from data_loading import (  # noqa: E402
    DatasetSourceArguments, check_streaming_training, load_splits, on_the_fly, require_column, user_source,
)

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


def embedded_corpus(data_args, seed: int):
    """The embedded corpus (`load_texts`) as a `datasets.DatasetDict` with a `text` column."""
    import datasets

    texts = load_texts(data_args.num_sentences, seed, data_args.corpus_kind, data_args.lexicon_size)
    return datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": rows}) for split, rows in texts.items()})


TEXT_FILE_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def load_text_files(data_args) -> dict:
    """`--train_file` / `--validation_file` -> `{split: Dataset or IterableDataset}`, each file read by `datasets`'
    `text` (one text a line), `json` (.json / .jsonl) or `csv` builder, as transformers' run_clm.py does."""
    import datasets

    splits = {}
    for split, path in ((data_args.train_split_name, data_args.train_file),
                        (data_args.eval_split_name, data_args.validation_file)):
        if not path:
            continue
        builder = TEXT_FILE_BUILDERS.get(Path(path).suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: a data file must end in {', '.join(TEXT_FILE_BUILDERS)} (plain text: one text a "
                             "line; json/jsonl/csv: a text column, see --text_column_name).")
        if not Path(path).is_file():
            raise FileNotFoundError(f"No data file at {path!r}.")
        options = {"keep_linebreaks": data_args.keep_linebreaks} if builder == "text" else {}
        splits[split] = datasets.load_dataset(builder, data_files={"train": path}, split="train",
                                              cache_dir=data_args.dataset_cache_dir, streaming=data_args.streaming,
                                              **options)
    return splits


def load_text_splits(data_args, seed: int) -> tuple[str, dict]:
    """`(source, {split: Dataset or IterableDataset})`: the files, the dataset or the embedded corpus (`source`:
    "train_file", "dataset_name", "dataset_path" or "embedded"), through `data_loading.load_splits`."""
    if data_args.validation_file and not data_args.train_file:
        raise ValueError("--validation_file needs --train_file.")
    if data_args.train_file:
        other = user_source(data_args)
        if other:
            raise ValueError(f"Give one data source, not --train_file and --{other}.")
        return "train_file", load_splits(data_args, embedded=lambda: load_text_files(data_args))
    source = user_source(data_args) or "embedded"
    return source, load_splits(data_args, embedded=lambda: embedded_corpus(data_args, seed))


def hold_out_validation(train, data_args) -> tuple:
    """`(train, validation)` for data without an evaluation split: the first `--validation_split_percentage` percent
    of the training texts (run_clm.py's choice); for a stream its first `--max_eval_samples` (default 1000)."""
    import datasets

    if isinstance(train, datasets.IterableDataset):
        count = data_args.max_eval_samples or 1000
        return train.skip(count), train.take(count)
    count = max(1, len(train) * data_args.validation_split_percentage // 100)
    if count >= len(train):
        raise ValueError(f"Only {len(train)} training texts and no evaluation split: pass --validation_file / an "
                         f"{data_args.eval_split_name!r} split, or more data.")
    validation = train.select(range(min(count, data_args.max_eval_samples or count)))
    return train.select(range(count, len(train))), validation


def checked_texts(texts: list, column: str) -> list[str]:
    """The non-empty texts of a batch of `column` cells (None and "" are skipped); anything else is an error."""
    kept = []
    for text in texts:
        if text is None or text == "":
            continue
        if not isinstance(text, str):
            raise ValueError(f"Column {column!r} holds {type(text).__name__} values, not text: pass --text_column_name "
                             "to name the text column.")
        kept.append(text)
    return kept


def text_batches(split, column: str, limit: Optional[int] = None, batch_size: int = 1000) -> Iterator[list[str]]:
    """The texts of `column` in lists of at most `batch_size` (the first `limit` rows), read batch by batch from a
    `datasets.Dataset` or `IterableDataset`: never the whole column at once."""
    import datasets

    if limit is not None:
        split = split.take(limit) if isinstance(split, datasets.IterableDataset) \
            else split.select(range(min(limit, len(split))))
    if not isinstance(split, datasets.IterableDataset) or split.features is not None:
        require_column(split, column, "--text_column_name")
        split = split.select_columns([column])
    for batch in split.iter(batch_size=batch_size):
        if column not in batch:
            raise ValueError(f"The data has no column {column!r} (columns: {sorted(batch)}); pass --text_column_name "
                             "to name the right one.")
        yield checked_texts(batch[column], column)


def build_tokenizer(texts: Union[list[str], Iterable[list[str]]], vocab_size: int, kind: str = "bpe"):
    """A byte-pair (or character) tokenizer trained locally, wrapped as `PreTrainedTokenizerFast`.
    `texts`: a list of strings, or an iterable of lists of strings (batches, read once: `text_batches`).
    Id 0 = `<|endoftext|>` (bos/eos), id 1 = `<|padding|>`, as in GPT-NeoX."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|padding|>"]
    if isinstance(texts, (list, tuple)) and (not texts or isinstance(texts[0], str)):
        texts = [list(texts)]  # one batch
    if kind == "char":
        chars = set()
        for batch in texts:
            for text in batch:
                chars.update(text)
        chars = sorted(chars)
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


class Counted:
    """Iterate `batches` (lists) and count their items in `count`."""

    def __init__(self, batches: Iterable[list]):
        self.batches, self.count = batches, 0

    def __iter__(self):
        for batch in self.batches:
            self.count += len(batch)
            yield batch


class BlockPacker:
    """Texts -> token ids, each text followed by eos, cut into `block_size` blocks. The tokens past a batch's last full
    block carry over to the next batch, so the blocks are those of packing all texts at once (the final remainder is
    dropped). As a `Dataset.map(batched=True, with_indices=True)` function it checks that batches come in order."""

    def __init__(self, tokenizer, column: str, block_size: int):
        self.tokenizer, self.column, self.block_size = tokenizer, column, block_size
        self.carry: list[int] = []
        self.next_index = 0

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        if indices and indices[0] == 0:
            self.carry, self.next_index = [], 0
        if indices and indices[0] != self.next_index:
            raise RuntimeError(f"Packing needs the batches in order: got row {indices[0]}, expected {self.next_index}.")
        self.next_index += len(indices)
        return {"input_ids": self.pack(checked_texts(batch[self.column], self.column))}

    def pack(self, texts: list[str]) -> list[list[int]]:
        ids, eos = self.carry, self.tokenizer.eos_token_id
        for encoded in self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
            ids.extend(encoded)
            ids.append(eos)
        usable = (len(ids) // self.block_size) * self.block_size
        self.carry = ids[usable:]
        return [ids[start:start + self.block_size] for start in range(0, usable, self.block_size)]


def pack_split(split, tokenizer, column: str, block_size: int):
    """A map-style split -> a `datasets.Dataset` of `(block_size,)` `input_ids` blocks, made by `Dataset.map` in
    batches (written to datasets' cache next to the data; in memory for in-memory data such as the embedded corpus)."""
    import datasets

    require_column(split, column, "--text_column_name")
    blocks = split.map(BlockPacker(tokenizer, column, block_size), batched=True, batch_size=1000, with_indices=True,
                       remove_columns=split.column_names, desc=f"Packing texts into blocks of {block_size}",
                       features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}))
    if len(blocks) == 0:
        raise ValueError(f"{len(split)} texts make fewer than one block of {block_size} tokens: pass a smaller "
                         "--block_size or more data.")
    return blocks


class StreamedBlocks(torch.utils.data.IterableDataset):
    """A stream of texts (`datasets.IterableDataset`) packed on the fly into `{"input_ids", "labels"}` blocks of
    `block_size` tokens (`BlockPacker`): only a batch of texts and one block's remainder are held at a time."""

    def __init__(self, source, tokenizer, column: str, block_size: int, texts_per_batch: int = 64):
        self.source, self.tokenizer, self.column, self.block_size = source, tokenizer, column, block_size
        self.texts_per_batch = texts_per_batch

    def __iter__(self):
        packer = BlockPacker(self.tokenizer, self.column, self.block_size)
        for texts in text_batches(self.source, self.column, batch_size=self.texts_per_batch):
            for block in packer.pack(texts):
                ids = torch.tensor(block, dtype=torch.long)
                yield {"input_ids": ids, "labels": ids}

    def set_epoch(self, epoch: int):  # the Trainer reshuffles a (shuffled) stream between epochs through this
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)


def block_item(row: dict, index) -> dict:
    """A packed row (numpy) -> the Trainer's item (labels = input_ids: the model shifts them)."""
    ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
    return {"input_ids": ids, "labels": ids}


def block_batches(blocks, batch_size: int) -> Iterator[torch.Tensor]:
    """`(batch, block_size)` LongTensors of a packed split: a `datasets.Dataset` of blocks (`pack_split`) or a
    `StreamedBlocks`."""
    if isinstance(blocks, StreamedBlocks):
        batch = []
        for item in blocks:
            batch.append(item["input_ids"])
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)
        return
    rows = blocks.with_format("numpy")
    for start in range(0, len(rows), batch_size):
        yield torch.as_tensor(rows[start:start + batch_size]["input_ids"], dtype=torch.long)


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


def build_config(args, vocab_size: int, tokenizer=None) -> BlackMambaConfig:
    """The model of `args` (`ModelArguments`); special token ids from `tokenizer` when given (else those of
    `build_tokenizer`: pad 1, bos = eos 0)."""
    ids = dict(pad_token_id=1, bos_token_id=0, eos_token_id=0)
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                   bos_token_id=eos if tokenizer.bos_token_id is None else tokenizer.bos_token_id)
    common = dict(
        vocab_size=vocab_size, hidden_size=args.hidden_size, state_size=args.state_size,
        ffn_hidden_size=args.ffn_hidden_size, num_experts=args.num_experts, hidden_act=args.hidden_act,
        router_aux_loss_coef=args.router_aux_loss_coef, output_router_logits=args.router_aux_loss_coef > 0,
        sinkhorn_in_training=args.routing == "sinkhorn", **ids,
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
def evaluate_perplexity(model, blocks, batch_size: int) -> dict:
    """Token-weighted next-token cross-entropy over the packed split `blocks` (`pack_split` or `StreamedBlocks`; no
    auxiliary loss) and the expert load it caused."""
    total_loss, total_tokens, load = 0.0, 0, None
    with evaluating(model) as base:
        for ids in block_batches(blocks, batch_size):
            ids = ids.to(base.device)
            logits = base(ids, use_cache=False, output_router_logits=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total_loss += loss.item()
            total_tokens += ids[:, 1:].numel()
            batch_load = base.expert_load()
            load = batch_load if load is None else load + batch_load
    if total_tokens == 0:
        raise ValueError("The evaluation split makes no block of --block_size tokens: pass more evaluation data or a "
                         "smaller --block_size.")
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


EMBEDDED_CORPUS_DEFAULTS = dict(num_sentences=20000, corpus_kind="mixed", lexicon_size=0)


@dataclass
class DataArguments(DatasetSourceArguments):
    """`DatasetSourceArguments` (--dataset_name, --dataset_path, --streaming, --max_train_samples, ...) plus the text
    files, the text column, the tokenizer and the embedded corpus."""

    train_file: Optional[str] = field(default=None, metadata={
        "help": "training texts: .txt (one text a line), or .json/.jsonl/.csv with a --text_column_name column"})
    validation_file: Optional[str] = field(default=None, metadata={
        "help": "evaluation texts, as --train_file (without it: --validation_split_percentage of the training texts)"})
    text_column_name: str = field(default="text", metadata={"help": "the column holding the texts"})
    validation_split_percentage: int = field(default=5, metadata={
        "help": "without an evaluation split: this percent of the training texts (the first ones) validates"})
    keep_linebreaks: bool = field(default=False, metadata={
        "help": "keep each line's line break in its text (.txt files; off: the eos token that follows each text "
                "already separates the lines)"})
    tokenizer: str = field(default="bpe", metadata={"choices": ["bpe", "char"],
                                                    "help": "byte-level BPE or character tokenizer, trained locally"})
    tokenizer_name: Optional[str] = field(default=None, metadata={
        "help": "load this tokenizer (AutoTokenizer.from_pretrained: a local folder or a Hub id) instead of training "
                "one"})
    tokenizer_train_samples: Optional[int] = field(default=None, metadata={
        "help": "train the tokenizer on the first N training texts (default: all of them; with --streaming 10000)"})
    vocab_size: int = field(default=512, metadata={"help": "BPE vocabulary size"})
    num_sentences: int = field(default=EMBEDDED_CORPUS_DEFAULTS["num_sentences"],
                               metadata={"help": "size of the embedded text corpus"})
    corpus_kind: str = field(default=EMBEDDED_CORPUS_DEFAULTS["corpus_kind"],
                             metadata={"choices": ["mixed", "sentences", "arithmetic", "facts"],
                                       "help": "which texts of the embedded corpus"})
    lexicon_size: int = field(default=EMBEDDED_CORPUS_DEFAULTS["lexicon_size"],
                              metadata={"help": "replace the nouns by this many pseudo-words (0: off)"})
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


def _streaming_takes_no_step_default(parsed: tuple, passed: set[str]) -> None:
    """A stream's training length is the user's call: with --streaming, the embedded corpus' 2000-step default does
    not apply, so training without --max_steps is `check_streaming_training`'s error."""
    data_args, training_args = parsed[1], parsed[-1]
    if data_args.streaming and "max_steps" not in passed:
        training_args.max_steps = -1


def parse_args(argv=None):
    """`(model_args, data_args, run_args, training_args)` from `argv` (default: sys.argv[1:]) or one `.json` file."""
    from transformers import TrainingArguments

    return parse_script_args((ModelArguments, DataArguments, RunArguments, TrainingArguments), TRAINING_DEFAULTS,
                             argv, __doc__.split("\n\n")[0], after_parse=_streaming_takes_no_step_default)


def load_tokenizer(name: str):
    """A tokenizer for `--tokenizer_name` (`AutoTokenizer`); packing needs its eos token, padding falls back to it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"The tokenizer {name!r} has no eos token, which separates the packed texts.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def main(argv=None):
    model_args, data_args, run_args, training_args = parse_args(argv)
    from transformers import AutoTokenizer, Trainer, set_seed

    check_streaming_training(data_args, training_args)
    if data_args.tokenizer_name and model_args.init_from:
        raise ValueError("--init_from brings its own tokenizer: leave out --tokenizer_name.")
    if run_args.threads:
        torch.set_num_threads(run_args.threads)
    set_seed(training_args.seed)
    source, splits = load_text_splits(data_args, training_args.seed)
    if source != "embedded":
        ignored = [f"--{k}" for k, v in EMBEDDED_CORPUS_DEFAULTS.items() if getattr(data_args, k) != v]
        if ignored:
            print(f"Note: {', '.join(ignored)} describe the embedded corpus and do not apply to --{source}.")
    column, streaming = data_args.text_column_name, data_args.streaming
    train, valid = splits[data_args.train_split_name], splits.get(data_args.eval_split_name)
    if valid is None:
        train, valid = hold_out_validation(train, data_args)
        print(f"No {data_args.eval_split_name!r} split: validating on texts held out of the training split.")
    for split in (train, valid):
        if split.features is not None:  # a stream of json may not know its columns before reading
            require_column(split, column, "--text_column_name")

    tokenizer_texts = None
    if model_args.init_from:
        tokenizer = AutoTokenizer.from_pretrained(model_args.init_from)
        model = BlackMambaForCausalLM.from_pretrained(model_args.init_from)
    else:
        if data_args.tokenizer_name:
            tokenizer = load_tokenizer(data_args.tokenizer_name)
        else:
            limit = data_args.tokenizer_train_samples or (10000 if streaming else None)
            texts = Counted(text_batches(train, column, limit))
            tokenizer = build_tokenizer(texts, data_args.vocab_size, data_args.tokenizer)
            tokenizer_texts = texts.count
        model = BlackMambaForCausalLM(build_config(model_args, len(tokenizer), tokenizer))
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

    block_size = data_args.block_size
    data_info = {"source": source, "streaming": streaming, "text_column": column,
                 "tokenizer": data_args.tokenizer_name or model_args.init_from or data_args.tokenizer,
                 "tokenizer_texts": tokenizer_texts}
    if streaming:  # packed on the fly, as the Trainer reads
        train_set = StreamedBlocks(train, tokenizer, column, block_size)
        valid_blocks = StreamedBlocks(valid, tokenizer, column, block_size)
        sizes = "train and validation streamed"
    else:  # packed once by datasets (cached with the data), read block by block
        with training_args.main_process_first(desc="packing texts into blocks"):
            train_blocks = pack_split(train, tokenizer, column, block_size)
            valid_blocks = pack_split(valid, tokenizer, column, block_size)
        train_set = on_the_fly(train_blocks, block_item)
        data_info.update(train_texts=len(train), train_blocks=len(train_blocks), validation_texts=len(valid),
                         validation_blocks=len(valid_blocks))
        sizes = f"train {len(train_blocks) * block_size:,} tokens, validation {len(valid_blocks) * block_size:,}"
    params = count_parameters(model.get_base_model() if model_args.lora else model)
    print(f"arch={model_args.arch} layers={model.config.layer_types} params total={params['total']:,} "
          f"active={params['active']:,}; {sizes}")

    eval_batch_size = training_args.per_device_eval_batch_size
    before = evaluate_perplexity(model, valid_blocks, eval_batch_size)
    budget = TrainingBudgetCallback(run_args.max_train_minutes)
    callbacks = [budget]
    churn = None
    if "moe" in model.config.layer_types:
        every = training_args.logging_steps if training_args.logging_steps >= 1 else 50  # a ratio: every 50 steps
        churn = RoutingChurn(next(block_batches(valid_blocks, 8)), int(every))
        churn.check(model, 0)
        callbacks.append(churn.callback)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_set, callbacks=callbacks,
                      processing_class=tokenizer)
    start = time.time()
    result = trainer.train()
    train_seconds = time.time() - start
    after = evaluate_perplexity(model, valid_blocks, eval_batch_size)
    if source == "embedded" and data_args.corpus_kind == "facts":  # only the embedded corpus states facts
        fact_texts = [text for batch in text_batches(valid, column, limit=2000) for text in batch]
        after["facts"] = evaluate_fact_recall(model, tokenizer, fact_texts, eval_batch_size)

    global_batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                    * training_args.world_size)
    metrics = {
        "arch": model_args.arch, "lora": model_args.lora, "router_frozen": model_args.freeze_router,
        "layer_types": model.config.layer_types,
        "parameters": params, "steps": result.global_step, "train_seconds": round(train_seconds, 1),
        "train_tokens_seen": result.global_step * global_batch * block_size,
        "validation_before": before, "validation": after, **budget.summary(),
    }
    if churn is not None:
        metrics["routing_churn"] = churn.history
    metrics["data"] = data_info
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
