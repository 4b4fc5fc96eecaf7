"""The command lines of the training scripts: the script defaults apply to every flag not passed, explicit flags (CLI,
JSON) win, recipes are fixed-length (no clock budget unless `--max_train_minutes` is given), removed flags are
argparse errors, the opt-in budget stops at a step boundary and says so, and tiny end-to-end runs write their output
directory."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import common  # noqa: E402
import compare_moe_dense  # noqa: E402
import finetune_audio_classification as finetune  # noqa: E402
import pretrain_ssamba as pretrain  # noqa: E402
import ssamba_keywords_main as keywords_main  # noqa: E402
import train_causal_lm as causal_lm  # noqa: E402
import train_ctc as ctc  # noqa: E402
import train_decoder_asr as decoder_asr  # noqa: E402
import train_keyword_search as keyword_search  # noqa: E402


class FakeClock:
    """`common.wall_clock` that advances `step` seconds at every reading (no sleeping)."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


# ---------------------------------------------------------------------------------------------- common


def test_budget_callback_stops_at_the_first_step_boundary_past_the_budget(monkeypatch, caplog):
    from transformers import TrainerControl, TrainerState

    monkeypatch.setattr(common, "wall_clock", FakeClock(25.0))  # 25 s per reading
    budget = common.TrainingBudgetCallback(1.0)
    args, state = SimpleNamespace(world_size=1), TrainerState(max_steps=10)
    budget.on_train_begin(args, state, TrainerControl())
    for step in range(1, 11):
        state.global_step = step
        if budget.on_step_end(args, state, TrainerControl()).should_training_stop:
            break
    assert step == 3 and budget.stopped_at_step == 3  # 25, 50 s elapsed after steps 1, 2; 75 s >= 60 s after step 3
    assert budget.summary() == {"stopped_by_time_budget": True, "max_train_minutes": 1.0}
    assert "training stopped at step 3 of 10" in caplog.text


def test_budget_callback_reports_only_real_cuts(monkeypatch):
    from transformers import TrainerControl, TrainerState

    monkeypatch.setattr(common, "wall_clock", FakeClock(3600.0))  # every step far past any budget
    args = SimpleNamespace(world_size=1)
    unlimited = common.TrainingBudgetCallback(None)
    state = TrainerState(max_steps=4, global_step=1)
    unlimited.on_train_begin(args, state, TrainerControl())
    assert not unlimited.on_step_end(args, state, TrainerControl()).should_training_stop
    assert unlimited.summary() == {"stopped_by_time_budget": False}
    # out of time on the recipe's last step: the run was not cut
    last = common.TrainingBudgetCallback(1.0)
    state = TrainerState(max_steps=4, global_step=4)
    last.on_train_begin(args, state, TrainerControl())
    assert not last.on_step_end(args, state, TrainerControl()).should_training_stop
    assert last.summary() == {"stopped_by_time_budget": False, "max_train_minutes": 1.0}


@pytest.mark.parametrize("parse, argv", [
    (causal_lm.parse_args, ["--batch_size", "4"]),
    (causal_lm.parse_args, ["--eval_batch_size=3"]),
    (causal_lm.parse_args, ["--no_sinkhorn"]),
    (causal_lm.parse_args, ["--max_minutes", "4"]),
    (decoder_asr.parse_args, ["--batch_size", "8"]),
    (ctc.parse_args, ["--max_train_cpu_minutes", "16"]),
    (keywords_main.parse_args, ["--pretrain_minutes", "2.5"]),
    (keywords_main.parse_args, ["--finetune_minutes", "11"]),
    (keywords_main.parse_args, ["--finetune_epochs", "25"]),
])
def test_removed_flags_are_argparse_errors(parse, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {' '.join(argv)}" in capsys.readouterr().err


@pytest.mark.parametrize("parse", [causal_lm.parse_args, ctc.parse_args, decoder_asr.parse_args, finetune.parse_args,
                                   pretrain.parse_args, keywords_main.parse_args, keyword_search.parse_args])
def test_every_script_prints_its_help_with_the_budget_flag(parse, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--help"])
    assert exit_info.value.code == 0  # argparse formats every help string (a bare "%" in one used to crash it)
    assert "--max_train_minutes" in capsys.readouterr().out


def test_removed_json_keys_are_argparse_errors(tmp_path, capsys):
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"batch_size": 2, "max_steps": 3}))
    with pytest.raises(SystemExit) as exit_info:
        causal_lm.parse_args([str(config)])
    assert exit_info.value.code == 2 and "unrecognized keys" in capsys.readouterr().err


def test_audio_scripts_have_no_clock_budget_by_default(tmp_path):
    for parse in (finetune.parse_args, pretrain.parse_args):
        *_, data_args, training_args = parse(["--output_dir", str(tmp_path)])
        assert data_args.max_train_minutes is None
        assert (training_args.max_steps, training_args.num_train_epochs) == (-1, 3)  # TrainingArguments' own
    *_, data_args, _ = finetune.parse_args(["--output_dir", str(tmp_path), "--max_train_minutes", "2"])
    assert data_args.max_train_minutes == 2


# ---------------------------------------------------------------------------------------------- ssamba_keywords_main


def test_keywords_main_defaults_are_the_documented_run():
    args = keywords_main.parse_args([])
    # model_cards/ssamba.md, main job: 178 pretraining + 1759 fine-tuning steps of batch 32, lr 3e-3
    assert (args.pretrain_steps, args.finetune_steps, args.batch_size, args.learning_rate) == (178, 1759, 32, 3e-3)
    assert args.max_train_minutes is None
    # the generalisation row of the card: espeak-ng + Festival at 3:1, two augmented copies, SAM and Pico held out
    # with 200 clips per class
    assert (args.engines, args.heldout_engines, args.waveform_augment_copies) == ("espeak-ng:3,festival:1", "sam,pico", 2)
    assert args.num_heldout_per_class == 200


def test_keywords_main_passes_its_lengths_and_budget_to_both_phases(tmp_path, monkeypatch):
    """main() with the training phases, the corpus and the pipeline stubbed: each phase gets its fixed step count, the
    opt-in budget is shared (fine-tuning gets what pretraining left) and a cut shows in results.json."""
    import transformers
    from datasets import ClassLabel, Dataset, DatasetDict

    import mamba_zoo.corpora

    def split(n):
        data = {"audio": [{"array": [0.0] * 160, "sampling_rate": 16000}] * n, "label": [i % 2 for i in range(n)],
                "voice": ["v"] * n}
        return Dataset.from_dict(data).cast_column("label", ClassLabel(names=["yes", "no"]))

    calls = {}

    def fake_pretrain(model_args, data_args, training_args, dataset):
        calls["pretrain"] = (training_args.max_steps, data_args.max_train_minutes)
        return {"steps": training_args.max_steps, "train_minutes": 3.0, "final_discriminative_accuracy": 0.5,
                "chance_discriminative_accuracy": 0.1, "final_generative_mse": 1.0, "stopped_by_time_budget": False}

    def fake_finetune(model_args, data_args, training_args, dataset):
        calls["finetune"] = (training_args.max_steps, data_args.max_train_minutes)
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        cut = data_args.max_train_minutes is not None
        return {"train_steps": 5 if cut else training_args.max_steps, "train_minutes": 1.0, "test_accuracy": 0.5,
                "test_clips": 4, "validation_accuracy": 0.5, "stopped_by_time_budget": cut}

    monkeypatch.setattr(mamba_zoo.corpora, "load_keywords",
                        lambda **kw: DatasetDict(train=split(4), validation=split(4), test=split(4)))
    monkeypatch.setattr(pretrain, "run", fake_pretrain)
    monkeypatch.setattr(finetune, "run", fake_finetune)
    monkeypatch.setattr(transformers, "pipeline", lambda *a, **kw: lambda audio, top_k: [{"label": "yes", "score": 1}])
    out = tmp_path / "kws"
    summary = keywords_main.main(["--output_dir", str(out), "--threads", "1"])
    assert calls == {"pretrain": (178, None), "finetune": (1759, None)}
    assert summary["stopped_by_time_budget"] is False and summary["finetune_steps"] == 1759
    summary = keywords_main.main(["--output_dir", str(out), "--threads", "1", "--max_train_minutes", "10"])
    assert calls == {"pretrain": (178, 10.0), "finetune": (1759, 7.0)}
    assert summary["stopped_by_time_budget"] is True
    assert json.loads((out / "results.json").read_text())["finetune"]["train_steps"] == 5


# ---------------------------------------------------------------------------------------------- train_causal_lm


def test_causal_lm_no_flags_gives_script_defaults():
    model_args, data_args, run_args, training_args = causal_lm.parse_args([])
    assert (model_args.arch, model_args.hidden_size, model_args.num_layers, model_args.state_size,
            model_args.ffn_hidden_size, model_args.num_experts, model_args.lora) == ("moe", 128, 8, 16, 256, 8, False)
    assert (model_args.routing, model_args.router_aux_loss_coef) == ("argmax", 0.01)
    assert (data_args.tokenizer, data_args.vocab_size, data_args.num_sentences, data_args.block_size) == (
        "bpe", 512, 20000, 128)
    assert run_args.threads is None and run_args.max_train_minutes is None  # fixed-length: no clock budget
    ta = training_args
    assert ta.output_dir == "outputs/blackmamba-text"
    assert (ta.per_device_train_batch_size, ta.per_device_eval_batch_size) == (16, 32)
    assert (ta.learning_rate, ta.max_steps, ta.warmup_steps, ta.weight_decay) == (2e-3, 2000, 50, 0.01)
    assert (ta.lr_scheduler_type.value, ta.save_strategy.value, ta.logging_steps, ta.seed) == ("cosine", "no", 50, 0)
    assert ta.report_to == [] and ta.remove_unused_columns is False and ta.disable_tqdm is True
    assert ta.use_cpu is False  # no longer forced: TrainingArguments picks the device


def test_causal_lm_explicit_flags_win(tmp_path):
    *_, ta = causal_lm.parse_args(["--learning_rate", "1e-4", "--max-steps=7", "--output_dir", str(tmp_path),
                                   "--warmup_steps", "0", "--seed", "3", "--lr_scheduler_type", "linear"])
    assert (ta.learning_rate, ta.max_steps, ta.output_dir, ta.warmup_steps, ta.seed) == (1e-4, 7, str(tmp_path), 0, 3)
    assert ta.lr_scheduler_type.value == "linear"
    assert ta.weight_decay == 0.01  # untouched flags keep the script default
    # epochs alone: the step default no longer overrides them
    *_, ta = causal_lm.parse_args(["--num_train_epochs", "2"])
    assert (ta.max_steps, ta.num_train_epochs) == (-1, 2)
    # the single-argument JSON form
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"learning_rate": 3e-4, "max_steps": 11, "arch": "dense",
                                  "per_device_train_batch_size": 2}))
    model_args, _, _, ta = causal_lm.parse_args([str(config)])
    assert (ta.learning_rate, ta.max_steps, model_args.arch, ta.per_device_train_batch_size) == (3e-4, 11, "dense", 2)
    assert (ta.output_dir, ta.warmup_steps, ta.per_device_eval_batch_size) == ("outputs/blackmamba-text", 50, 32)


def test_causal_lm_routing_flags_set_the_config():
    def config(*flags):
        model_args, *_ = causal_lm.parse_args(list(flags))
        return causal_lm.build_config(model_args, vocab_size=40)

    default = config()
    assert default.sinkhorn_in_training is False and default.router_aux_loss_coef == 0.01
    assert default.output_router_logits is True  # the aux loss needs the router logits
    released = config("--routing", "sinkhorn", "--router_aux_loss_coef", "0")
    assert released.sinkhorn_in_training is True and released.output_router_logits is False


def test_causal_lm_tiny_run_writes_output_dir(tmp_path):
    from mamba_zoo import BlackMambaForCausalLM

    out = tmp_path / "lm"
    metrics = causal_lm.main([
        "--output_dir", str(out), "--hidden_size", "32", "--num_layers", "2", "--ffn_hidden_size", "32",
        "--num_experts", "2", "--num_sentences", "300", "--vocab_size", "300", "--block_size", "32",
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
    ])
    assert metrics["steps"] == 3 and metrics["train_tokens_seen"] == 3 * 4 * 32
    assert metrics["stopped_by_time_budget"] is False and "max_train_minutes" not in metrics
    assert json.loads((out / "metrics.json").read_text())["validation"]["perplexity"] > 1
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    model = BlackMambaForCausalLM.from_pretrained(out)
    assert model.config.layer_types == ["mamba", "moe"] and model.config.hidden_size == 32


def test_causal_lm_time_budget_cuts_the_run_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "wall_clock", FakeClock(10.0))  # every step takes 10 s of the 30 s budget
    out = tmp_path / "lm"
    metrics = causal_lm.main([
        "--output_dir", str(out), "--hidden_size", "32", "--num_layers", "2", "--ffn_hidden_size", "32",
        "--num_experts", "2", "--num_sentences", "300", "--vocab_size", "300", "--block_size", "32",
        "--max_steps", "6", "--per_device_train_batch_size", "4", "--max_train_minutes", "0.5",
    ])
    assert (metrics["steps"], metrics["stopped_by_time_budget"], metrics["max_train_minutes"]) == (3, True, 0.5)
    assert json.loads((out / "metrics.json").read_text())["stopped_by_time_budget"] is True


@pytest.mark.parametrize("freeze", [False, True])
def test_causal_lm_freeze_router_keeps_routers_at_init(tmp_path, freeze):
    from safetensors.torch import load_file

    out = tmp_path / "lm"
    metrics = causal_lm.main([
        "--output_dir", str(out), "--hidden_size", "32", "--num_layers", "2", "--ffn_hidden_size", "32",
        "--num_experts", "2", "--num_sentences", "300", "--vocab_size", "300", "--block_size", "32",
        "--max_steps", "3", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--warmup_steps", "0",
        "--logging_steps", "1",
    ] + (["--freeze_router"] if freeze else []))
    router_size = 32 * 2 + 2  # one MoE layer: weight (2, 32) + bias (2,)
    params = metrics["parameters"]
    assert metrics["router_frozen"] is freeze
    assert params["trainable"] == params["total"] - (router_size if freeze else 0)
    weights = load_file(out / "model.safetensors")
    router_bias = [v for k, v in weights.items() if k.endswith("router.bias")]
    assert len(router_bias) == 1
    # the router bias is initialised to zero: three Adam steps at lr 1e-2 move it unless it is frozen
    assert bool((router_bias[0] == 0).all()) is freeze
    # routing churn is checked every logging step (here 1): one fraction per MoE layer
    assert [entry["step"] for entry in metrics["routing_churn"]] == [1, 2, 3]
    assert all(len(entry["changed"]) == 1 and 0 <= entry["changed"][0] <= 1 for entry in metrics["routing_churn"])


def test_causal_lm_routing_churn_is_zero_when_nothing_trains(tmp_path):
    common = ["--hidden_size", "32", "--num_layers", "2", "--ffn_hidden_size", "32", "--num_experts", "4",
              "--num_sentences", "300", "--vocab_size", "300", "--block_size", "32", "--max_steps", "4",
              "--per_device_train_batch_size", "4", "--warmup_steps", "0", "--logging_steps", "2"]
    still = causal_lm.main(common + ["--output_dir", str(tmp_path / "still"), "--learning_rate", "0"])
    assert [entry["changed"] for entry in still["routing_churn"]] == [[0.0], [0.0]]
    moving = causal_lm.main(common + ["--output_dir", str(tmp_path / "moving"), "--learning_rate", "0.1"])
    assert sum(entry["changed"][0] for entry in moving["routing_churn"]) > 0


def test_causal_lm_freeze_router_without_moe_layers_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--arch moe"):
        causal_lm.main(["--arch", "dense", "--freeze_router", "--output_dir", str(tmp_path), "--hidden_size", "32",
                        "--num_layers", "2", "--ffn_hidden_size", "32", "--num_sentences", "300",
                        "--vocab_size", "300", "--block_size", "32", "--max_steps", "1"])


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_fact_recall_scores_answer_tokens_only(kind):
    """evaluate_fact_recall against a plain per-sentence computation: the answer's tokens found by tokenising the text
    before the answer and the whole text separately, one unpadded sentence at a time."""
    import math

    import torch

    from mamba_zoo import BlackMambaConfig, BlackMambaForCausalLM

    texts = ["the vabonu lives near the river.", "emma owns the kisa.", "the kisa is cold.",
             "the mapeniko lives near the garden.", "the vabonu is quiet."]
    tokenizer = causal_lm.build_tokenizer(texts * 20, 300, kind)
    torch.manual_seed(0)
    model = BlackMambaForCausalLM(BlackMambaConfig(layer_types=["mamba", "moe"], hidden_size=32, ffn_hidden_size=32,
                                                   num_experts=2, vocab_size=len(tokenizer))).eval()
    result = causal_lm.evaluate_fact_recall(model, tokenizer, texts, batch_size=2)
    losses, recalled = [], 0
    for text in texts:
        if " owns " in text:
            continue
        prefix = text[:text.rindex(" ")]  # the answer's tokens (from the space before it) follow the prefix's, to "."
        ids = [tokenizer.eos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        first = 1 + len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        last = len(ids) - 1  # the final "." token
        with torch.no_grad():
            log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        token_losses = [-log_probs[i - 1, ids[i]].item() for i in range(first, last)]
        losses.extend(token_losses)
        recalled += all(log_probs[i - 1].argmax().item() == ids[i] for i in range(first, last))
    assert result["num_answers"] == 4
    assert result["answer_tokens"] == len(losses)
    assert math.isclose(result["answer_loss"], sum(losses) / 4, rel_tol=1e-5)  # nats per answer
    assert result["answer_accuracy"] == recalled / 4


# ---------------------------------------------------------------------------------------------- compare_moe_dense


def _fake_metrics(perplexity, recall=None, active=100, total=400):
    validation = {"perplexity": perplexity}
    if recall is not None:
        validation["facts"] = {"answer_accuracy": recall, "answer_loss": 1 - recall}
    return {"validation": validation, "parameters": {"active": active, "total": total}, "train_seconds": 1.0}


def test_compare_summary_pairs_seeds_and_counts_wins():
    results = {
        "moe": {0: _fake_metrics(2.0, 0.5), 1: _fake_metrics(3.3, 0.4), 2: _fake_metrics(2.7, 0.6)},
        "dense": {0: _fake_metrics(2.5, 0.3), 1: _fake_metrics(3.0, 0.5), 2: _fake_metrics(3.0, 0.2)},
    }
    summary = compare_moe_dense.summarise(results, "dense")
    moe = summary["archs"]["moe"]
    assert moe["vs_baseline_percent"] == pytest.approx([-20.0, 10.0, -10.0])
    assert moe["mean_vs_baseline_percent"] == pytest.approx(-20 / 3)
    assert (moe["wins"], moe["losses"]) == (2, 1)
    assert moe["mean_perplexity"] == pytest.approx(8.0 / 3) and moe["mean_fact_recall"] == pytest.approx(0.5)
    assert summary["archs"]["dense"]["vs_baseline_percent"] == [0.0, 0.0, 0.0]
    table = compare_moe_dense.format_table(summary)
    assert "| 1 | 3.300 / 40.0% | 3.000 / 50.0% | +10.0% |" in table
    assert "moe: lower perplexity than dense in 2 of 3 seeds (higher in 1" in table
    # unpaired seeds are refused, not silently averaged
    results["moe"].pop(2)
    with pytest.raises(ValueError, match="pair every seed"):
        compare_moe_dense.summarise(results, "dense")


def test_compare_sign_test_against_binomial_tails():
    # 6 of 6: 2 * 0.5**6; 5 of 6: 2 * 7/64; an even split or no decided seed: 1
    assert compare_moe_dense.sign_test_p(6, 0) == pytest.approx(2 / 64)
    assert compare_moe_dense.sign_test_p(1, 5) == pytest.approx(14 / 64)
    assert compare_moe_dense.sign_test_p(3, 3) == 1.0 and compare_moe_dense.sign_test_p(0, 0) == 1.0


def test_compare_runs_the_training_script_and_reuses_finished_runs(tmp_path, capsys):
    tiny = ["--hidden_size", "32", "--num_layers", "2", "--ffn_hidden_size", "32", "--num_experts", "2",
            "--num_sentences", "300", "--lexicon_size", "20", "--vocab_size", "300", "--block_size", "32",
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--warmup_steps", "0", "--logging_steps", "1"]
    out = tmp_path / "cmp"
    summary = compare_moe_dense.main(["--seeds", "0", "--jobs", "2", "--output_dir", str(out), "--", *tiny])
    for arch in ("moe", "dense"):
        metrics = json.loads((out / f"{arch}-seed0" / "metrics.json").read_text())
        assert metrics["arch"] == arch and metrics["steps"] == 2
        assert summary["archs"][arch]["perplexity"] == [metrics["validation"]["perplexity"]]
        assert "fact_recall" in summary["archs"][arch]  # the recipe's facts corpus
    assert summary["archs"]["moe"]["parameters"]["total"] > summary["archs"]["dense"]["parameters"]["total"]
    assert json.loads((out / "summary.json").read_text())["archs"]["moe"]["perplexity"] == \
        summary["archs"]["moe"]["perplexity"]
    assert "| 0 |" in capsys.readouterr().out
    # --reuse keeps runs of the same command and retrains a run whose command changed
    moe_file, dense_file = out / "moe-seed0" / "metrics.json", out / "dense-seed0" / "metrics.json"
    moe_before, dense_before = moe_file.stat().st_mtime_ns, dense_file.stat().st_mtime_ns
    compare_moe_dense.main(["--seeds", "0", "--archs", "moe", "--baseline", "moe", "--reuse",
                            "--output_dir", str(out), "--", *tiny])
    assert moe_file.stat().st_mtime_ns == moe_before
    compare_moe_dense.main(["--seeds", "0", "--archs", "dense", "--baseline", "dense", "--reuse",
                            "--output_dir", str(out), "--", *tiny, "--max_steps", "3"])
    assert dense_file.stat().st_mtime_ns != dense_before
    assert json.loads(dense_file.read_text())["steps"] == 3


def test_compare_bad_arguments_are_clear_errors(tmp_path, capsys):
    for argv, message in [(["--archs", "moe", "--baseline", "dense"], "is not among --archs"),
                          (["--seeds", "1", "1"], "repeats a seed"),
                          (["--", "--seed", "3"], "set by this script per run")]:
        with pytest.raises(SystemExit):
            compare_moe_dense.main(argv + ([] if "--" in argv else ["--output_dir", str(tmp_path)]))
        assert message in capsys.readouterr().err


def test_compare_failed_run_reports_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="failed .exit code"):
        compare_moe_dense.main(["--seeds", "0", "--archs", "dense", "--output_dir", str(tmp_path), "--",
                                "--hidden_size", "not-a-number"])


# ---------------------------------------------------------------------------------------------- train_decoder_asr


def test_decoder_asr_no_flags_gives_script_defaults():
    model_args, data_args, run_args, training_args = decoder_asr.parse_args([])
    assert (model_args.speech_input, model_args.speech_prefix, model_args.mixer_type, model_args.hidden_size,
            model_args.num_layers, model_args.num_subsampling_layers) == ("features", "parallel", "mamba", 128, 6, 3)
    assert (model_args.ctc_loss_weight, model_args.ctc_upsample, model_args.ctc_decoding_weight) == (0.3, 2, 0.5)
    assert (data_args.kind, data_args.num_train, data_args.num_eval) == ("digits", 2000, 200)
    assert (run_args.ablation, run_args.num_beams, run_args.threads) == (False, 4, None)
    assert (run_args.ablation_prefixes, run_args.ablation_mixers) == ("none,parallel,serial", "mamba,mamba2")
    ta = training_args
    assert ta.output_dir == "outputs/mamba-asr-digits"
    assert (ta.per_device_train_batch_size, ta.learning_rate, ta.max_steps, ta.warmup_steps) == (16, 2e-3, 1500, 100)
    assert (ta.lr_scheduler_type.value, ta.weight_decay, ta.max_grad_norm) == ("cosine", 0.01, 1.0)
    assert ta.logging_steps == 50
    assert (ta.save_strategy.value, ta.seed, ta.report_to, ta.remove_unused_columns) == ("no", 0, [], False)
    assert ta.use_cpu is False


def test_decoder_asr_explicit_flags_win(tmp_path):
    *_, ta = decoder_asr.parse_args(["--learning_rate", "5e-4", "--max_steps", "300",
                                     "--per_device_train_batch_size", "8"])
    assert (ta.learning_rate, ta.max_steps, ta.per_device_train_batch_size) == (5e-4, 300, 8)
    assert ta.warmup_steps == 30  # min(100, max_steps // 10) of the max_steps given
    *_, ta = decoder_asr.parse_args(["--max_steps", "300", "--warmup_steps", "5"])
    assert ta.warmup_steps == 5
    *_, ta = decoder_asr.parse_args(["--num_train_epochs", "4"])
    assert (ta.max_steps, ta.num_train_epochs, ta.warmup_steps) == (-1, 4, 0.1)
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"learning_rate": 1e-3, "max_steps": 40, "ablation": True}))
    _, _, run_args, ta = decoder_asr.parse_args([str(config)])
    assert (ta.learning_rate, ta.max_steps, ta.warmup_steps, run_args.ablation) == (1e-3, 40, 4, True)
    assert ta.output_dir == "outputs/mamba-asr-digits"


def _engines_here():
    from mamba_zoo.corpora import engines_status

    # the default engines (Festival to train, SAM held out) where installed, else espeak-ng alone
    return [] if all(reason is None for reason in engines_status().values()) else [
        "--engines", "espeak-ng", "--heldout_engines", ""]


TINY_ASR = ["--num_train", "16", "--num_eval", "4", "--hidden_size", "32", "--num_layers", "2",
            "--per_device_train_batch_size", "4", "--max_steps", "2"] + _engines_here()


def test_decoder_asr_tiny_run_writes_output_dir(tmp_path):
    from mamba_zoo import MambaDecoderOnlyASR

    out = tmp_path / "asr"
    result = decoder_asr.main(TINY_ASR + ["--output_dir", str(out)])
    assert result["steps"] == 2 and 0 <= result["test_cer"] and result["stopped_by_time_budget"] is False
    assert json.loads((out / "results.json").read_text())["steps"] == 2
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    loaded = MambaDecoderOnlyASR.from_pretrained(out)
    assert loaded.config.num_hidden_layers == 2
    # the decoding measured is the checkpoint's default: joint CTC/attention, 4 beams
    assert (loaded.config.ctc_decoding_weight, loaded.generation_config.num_beams) == (0.5, 4)
    assert (result["ctc_decoding_weight"], result["num_beams"]) == (0.5, 4)


def test_decoder_asr_ablation(tmp_path, monkeypatch):
    """--ablation trains each configuration in one process. (Decoding is stubbed: the full run above covers it.)"""
    monkeypatch.setattr(decoder_asr, "transcribe", lambda model, processor, audio, **kw: ["one"] * len(audio))
    out = tmp_path / "ablation"
    rows = decoder_asr.main(TINY_ASR + ["--output_dir", str(out), "--ablation", "--ablation_prefixes", "none,parallel",
                                        "--ablation_mixers", "mamba"])
    assert [(r["mixer_type"], r["speech_prefix"], r["steps"]) for r in rows] == [("mamba", "none", 2),
                                                                                 ("mamba", "parallel", 2)]
    assert len(json.loads((out / "ablation.json").read_text())) == 2
    assert not (out / "config.json").exists()  # ablation runs save no model
    assert (out / "runs" / "mamba-none").is_dir() and (out / "runs" / "mamba-parallel").is_dir()


# ---------------------------------------------------------------------------------------------- train_ctc


def test_ctc_no_flags_gives_script_defaults():
    model_args, data_args, run_args, ta = ctc.parse_args([])
    assert (model_args.hidden_size, model_args.num_hidden_layers, model_args.subsampling_conv_channels,
            model_args.block_type, model_args.lora, model_args.lora_r, model_args.init_from) == (
        96, 4, 32, "mamba", False, 8, None)
    assert (data_args.kind, data_args.num_train, data_args.num_eval, data_args.concat_probability) == (
        "digits", 2000, 200, 0.3)
    assert (run_args.max_train_minutes, run_args.beam_width, run_args.skip_long_form, run_args.eval_only,
            run_args.num_threads) == (None, 0, False, False, 1)  # fixed-length: no clock budget
    assert ta.output_dir == "outputs/mamba-ctc-digits"
    assert (ta.num_train_epochs, ta.max_steps, ta.per_device_train_batch_size, ta.per_device_eval_batch_size) == (
        15, -1, 16, 32)
    assert (ta.learning_rate, ta.warmup_steps, ta.weight_decay, ta.gradient_accumulation_steps, ta.max_grad_norm,
            ta.seed) == (3e-3, 60, 0.01, 1, 1.0, 0)
    assert (ta.lr_scheduler_type.value, ta.eval_strategy.value, ta.save_strategy.value) == ("cosine", "epoch", "no")
    assert ta.logging_steps == -1  # a quarter epoch, resolved by train_model
    assert ta.report_to == [] and ta.remove_unused_columns is False and ta.disable_tqdm is True
    assert ta.use_cpu is False


def test_ctc_explicit_flags_win(tmp_path):
    model_args, _, run_args, ta = ctc.parse_args([
        "--num_train_epochs", "2", "--learning_rate=1e-4", "--output_dir", str(tmp_path), "--seed", "3",
        "--lora", "--init_from", "ckpt", "--skip_long_form", "--num_threads", "0", "--logging_steps", "7"])
    assert (ta.num_train_epochs, ta.learning_rate, ta.output_dir, ta.seed, ta.logging_steps) == (
        2, 1e-4, str(tmp_path), 3, 7)
    assert (model_args.lora, model_args.init_from, run_args.skip_long_form, run_args.num_threads) == (
        True, "ckpt", True, 0)
    assert (ta.warmup_steps, ta.per_device_train_batch_size) == (60, 16)  # untouched flags keep the script default
    config = tmp_path / "args.json"
    config.write_text(json.dumps({"learning_rate": 1e-3, "max_steps": 5, "concat_probability": 0.0}))
    _, data_args, _, ta = ctc.parse_args([str(config)])
    assert (ta.learning_rate, ta.max_steps, data_args.concat_probability) == (1e-3, 5, 0.0)
    assert (ta.output_dir, ta.num_train_epochs, ta.warmup_steps) == ("outputs/mamba-ctc-digits", 15, 60)


def test_ctc_tiny_run_writes_output_dir(tmp_path):
    from mamba_zoo import MambaForCTC

    out = tmp_path / "ctc"
    results = ctc.main(["--num_train", "16", "--num_eval", "4", "--hidden_size", "32", "--num_hidden_layers", "2",
                        "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--skip_long_form",
                        "--output_dir", str(out)] + _engines_here())
    assert results["steps"] == 2 and 0 <= results["test"]["cer"] and results["stopped_by_time_budget"] is False
    assert json.loads((out / "eval_results.json").read_text())["steps"] == 2
    for name in ("config.json", "model.safetensors", "processor_config.json", "vocab.json", "README.md"):
        assert (out / name).is_file(), name
    assert MambaForCTC.from_pretrained(out).config.num_hidden_layers == 2


# ---------------------------------------------------------------------------------------------- generalisation


def _tiny_engine_corpus(with_voices=True):
    import numpy as np
    from datasets import ClassLabel, Dataset, DatasetDict

    rng = np.random.default_rng(0)

    def split(n, voices):
        labels = [i % 3 for i in range(n)]
        t = np.arange(16000) / 16000
        audio = [{"array": (0.3 * np.sin(2 * np.pi * (200 + 150 * y) * t) * (0.5 + 0.5 * rng.random())
                            + 0.01 * rng.standard_normal(16000)).astype(np.float32), "sampling_rate": 16000}
                 for y in labels]
        data = {"audio": audio, "label": labels}
        if with_voices:
            data["voice"] = [voices[i % len(voices)] for i in range(n)]
        return Dataset.from_dict(data).cast_column("label", ClassLabel(names=["a", "b", "c"]))

    return DatasetDict(train=split(12, ["en+m1", "festival:kal_diphone"]), validation=split(6, ["en+f2"]),
                       test=split(6, ["en+f3"]), heldout_engine=split(9, ["sam:elf", "sam:deep", "festival:x"]))


def _tiny_finetune(output_dir, seed=0, copies=1, resynthesis=0.0):
    from transformers import TrainingArguments

    return finetune.run(
        finetune.ModelArguments(hidden_size=16, num_hidden_layers=2, patch_frames=8, drop_path_rate=0.0),
        finetune.DataArguments(waveform_augment_copies=copies, engines="espeak-ng,festival", heldout_engines="sam",
                               waveform_augment_resynthesis=resynthesis),
        TrainingArguments(output_dir=str(output_dir), max_steps=3, per_device_train_batch_size=4, report_to=[],
                          save_strategy="no", disable_tqdm=True, seed=seed, learning_rate=1e-2),
        dataset=_tiny_engine_corpus(),
    )


def test_recipe_with_augmentation_and_a_heldout_engine_repeats_to_the_bit(tmp_path):
    """The same command and seed give the same model and metrics (fixed length, seeded augmentation); the held-out
    engine is scored overall and per engine; the card says what was held out and how clips were augmented."""
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    a, b = _tiny_finetune(tmp_path / "a"), _tiny_finetune(tmp_path / "b")
    c = _tiny_finetune(tmp_path / "c", seed=1)
    timing = ("train_minutes", "total_minutes", "train_samples_per_second")
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    wa, wb, wc = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)  # the seed matters
    assert a["train_steps"] == 3 and a["waveform_augment_copies"] == 1 and a["heldout_engine_clips"] == 9
    assert {"heldout_engine_accuracy", "heldout_engine_accuracy_sam", "heldout_engine_accuracy_festival"} <= set(a)
    card = (tmp_path / "a" / "README.md").read_text()
    assert "held-out engines sam" in card and "augmentation: 1 seeded copies" in card


def test_resynthesis_probability_reaches_the_augmenter_the_metrics_and_the_card(tmp_path, monkeypatch):
    import numpy as np

    made = []

    def spy(clips, sampling_rate, copies, seed, **kwargs):
        made.append(kwargs.get("settings"))
        return common.augmented_copies(clips, sampling_rate, copies, seed, **kwargs)

    monkeypatch.setattr(finetune, "augmented_copies", spy)
    result = _tiny_finetune(tmp_path / "r", resynthesis=1.0)
    assert made == [{"p_resynthesis": 1.0}] and result["waveform_augment_resynthesis"] == 1.0
    assert "source-filter resynthesis p=1" in (tmp_path / "r" / "README.md").read_text()
    # with p = 1 every copy is a resynthesis: the copies differ from those of the default chain
    clips = [(0.3 * np.sin(np.arange(4000) * 0.07 * (1 + 0.1 * i))).astype(np.float32) for i in range(3)]
    plain = common.augmented_copies(clips, 16000, 1, seed=0)[0]
    vocoded = common.augmented_copies(clips, 16000, 1, seed=0, settings={"p_resynthesis": 1.0})[0]
    assert all(not np.array_equal(a, b) for a, b in zip(plain, vocoded))
    with pytest.raises(ValueError, match="waveform_augment_resynthesis"):
        _tiny_finetune(tmp_path / "bad", resynthesis=1.5)


def test_augmented_copies_do_not_depend_on_the_worker_count():
    import numpy as np

    rng = np.random.default_rng(3)
    clips = [(0.2 * rng.standard_normal(4000)).astype(np.float32) for _ in range(70)]
    serial = common.augmented_copies(clips, 16000, 2, seed=5, num_workers=0)
    parallel = common.augmented_copies(clips, 16000, 2, seed=5, num_workers=2)
    assert len(serial) == 2 and all(len(copy) == 70 for copy in serial)
    for s, p in zip(serial, parallel):
        assert all(np.array_equal(x, y) for x, y in zip(s, p))
    assert not np.array_equal(serial[0][0], serial[1][0])  # two copies differ
    assert all(x.shape == c.shape for x, c in zip(serial[0], clips))
    # a clip can draw speed 1.0 and no other step (about 4%): most, not all, change
    assert sum(not np.array_equal(x, c) for x, c in zip(serial[0], clips)) > 0.8 * len(clips)


def test_accuracy_by_engine_scores_each_engine_and_counts_noise_only_in_the_total():
    import numpy as np

    predictions, labels = np.array([0, 1, 1, 2, 0]), np.array([0, 1, 0, 2, 1])
    result = finetune.accuracy_by_engine(predictions, labels, ["sam:elf", "sam:deep", "festival:kal_diphone", "", "en"])
    assert result == {"accuracy": 0.6, "accuracy_sam": 1.0, "accuracy_festival": 0.0, "accuracy_espeak-ng": 0.0}


# ---------------------------------------------------------------------------------------------- train_keyword_search


def test_keyword_search_defaults_and_tiny_run(tmp_path):
    """Fixed-length defaults; a tiny run saves a frame classifier without position embeddings, its feature extractor,
    results (detection scores on test scenes) and a model card."""
    from mamba_zoo import SSAMBAForAudioFrameClassification

    args, ta = keyword_search.parse_args([])
    assert (ta.max_steps, ta.per_device_train_batch_size, args.scene_seconds, args.max_train_minutes) == (
        400, 16, 8, None)
    out = tmp_path / "kws"
    result = keyword_search.main(["--num_per_class", "4", "--max_steps", "2", "--num_eval_scenes", "1",
                                  "--num_tune_scenes", "2", "--min_duration", "0.2",
                                  "--scene_seconds", "3", "--hidden_size", "32", "--num_hidden_layers", "2",
                                  "--per_device_train_batch_size", "2", "--output_dir", str(out)] + _engines_here())
    assert result["steps"] == 2 and 0 <= result["test"]["f1"] <= 1 and 0 <= result["test"]["column_accuracy"] <= 1
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "results.json", "README.md"):
        assert (out / name).is_file(), name
    model = SSAMBAForAudioFrameClassification.from_pretrained(out)
    assert model.config.use_position_embeddings is False and "yes" in model.config.id2label.values()
    # detection settings: the threshold tuned on validation scenes (min_duration fixed by the flag), saved with the model
    grid = result["detection_tuning"]["grid"]
    assert [row["threshold"] for row in grid] == list(keyword_search.TUNING_THRESHOLDS)
    assert {row["min_duration"] for row in grid} == {0.2} and result["min_duration"] == 0.2
    assert result["detection_tuning"]["validation_f1"] == max(row["f1"] for row in grid)
    assert model.config.keyword_search == {"threshold": result["threshold"], "min_duration": 0.2}
    assert "validation scenes" in (out / "README.md").read_text()


def test_keyword_search_tuning_picks_the_best_f1_on_validation_scenes():
    """On scenes where every keyword peaks at 0.9 and a false alarm at 0.55, thresholds from 0.6 keep only the
    keywords: the tuner picks 0.6 (the first of the equal best), and a fixed threshold is kept as given."""
    labels = ["_silence_", "_unknown_", "yes"]
    times = np.stack([np.arange(100) * 0.04, np.arange(100) * 0.04 + 0.04], axis=1)
    probs = np.zeros((100, 3))
    probs[:, 0] = 1.0
    probs[25:50] = [0.05, 0.05, 0.9]  # "yes" in second 1 to 2 (columns 25-49)
    probs[60:95] = [0.2, 0.25, 0.55]  # a long false alarm (no shortest-event setting drops it)
    slots = np.array([0, 2, 0, 0])
    outputs = [(probs, times, slots, [{"label": "yes", "start": 1.0, "end": 2.0}])]
    best = keyword_search.tune_detection(outputs, labels)
    assert (best["threshold"], best["min_duration"], best["f1"]) == (0.6, 0.1, 1.0)
    assert len(best["grid"]) == len(keyword_search.TUNING_THRESHOLDS) * len(keyword_search.TUNING_MIN_DURATIONS)
    assert keyword_search.tune_detection(outputs, labels, threshold=0.5)["f1"] < 1.0


# ---------------------------------------------------------------------------------------------- evaluate_keyword_engines


def test_evaluate_keyword_engines_refuses_engines_the_checkpoint_heard(tmp_path):
    import evaluate_keyword_engines

    with pytest.raises(SystemExit, match="not a saved model"):
        evaluate_keyword_engines.main(["--checkpoint", str(tmp_path), "--engines", "sam"])
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "results.json").write_text(json.dumps({"training_engines": "espeak-ng:3,festival:1,pico:1"}))
    # the recorded engines count even when --training_engines (which only shapes the corpus) says otherwise
    for extra in ([], ["--training_engines", "espeak-ng:3,festival:1"]):
        with pytest.raises(SystemExit, match=r"trained on \['pico'\]"):
            evaluate_keyword_engines.main(["--checkpoint", str(tmp_path), "--engines", "sam,pico", *extra])


def test_evaluate_keyword_engines_scores_each_engine_and_class():
    import evaluate_keyword_engines

    voices = ["sam:elf", "sam:deep", "sam:elf", "pico:en-US", "pico:en-GB", "", "pico:en-US"]
    labels = np.array([0, 0, 1, 0, 1, 2, 1])
    predictions = np.array([0, 1, 1, 0, 0, 2, 1])
    result = evaluate_keyword_engines.accuracy_by_engine_and_class(predictions, labels, voices,
                                                                   {0: "yes", 1: "no", 2: "_silence_"})
    # counted by hand: sam yes 1/2, sam no 1/1; pico yes 1/1, pico no 1/2; the noise clip belongs to no engine
    assert result == {"pico": {"yes": 1.0, "no": 0.5}, "sam": {"yes": 0.5, "no": 1.0}}
