"""Multi-process training through the standard engines, on CPU (gloo): torchrun + Trainer (DDP), `accelerate launch`
+ Trainer, Trainer with `--fsdp`, and FSDP2 `fully_shard` over `MambaBlock`s.

One process with batch 4 and two processes with batch 2 see the same global batches (sequential sampler), so their
loss curves must agree; each process must run with one intra-op thread on this 2-core machine (no oversubscription,
including after our numba kernels ran). docs/distributed.md describes the commands these tests run.
"""

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).parent / "scripts"
SCRIPT = SCRIPTS / "ddp_train_tiny.py"
FSDP_TRAINER_SCRIPT = SCRIPTS / "fsdp_train_tiny.py"
FSDP2_LOOP_SCRIPT = SCRIPTS / "fsdp2_loop_tiny.py"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="gloo multi-process tests run on Linux")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    # no OMP_NUM_THREADS: the launchers must give each of the 2 processes 1 thread themselves
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}


def _trainer_args(output_dir: Path, per_device_batch: int) -> list:
    return [
        "--output_dir", str(output_dir), "--max_steps", "4", "--learning_rate", "1e-2",
        "--per_device_train_batch_size", str(per_device_batch), "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--ddp_find_unused_parameters", "false",
    ]


def _torchrun_command(nproc: int, script: Path, script_args: list) -> list:
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(script), *script_args,
    ]


def _run(command: list, what: str, env: dict | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env or _env())
    assert result.returncode == 0, f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _torchrun(nproc: int, per_device_batch: int, output_dir: Path) -> dict:
    _run(_torchrun_command(nproc, SCRIPT, _trainer_args(output_dir, per_device_batch)), "torchrun")
    return json.loads((output_dir / "losses.json").read_text())


def _assert_same_curve(reference: list, other: list) -> None:
    assert len(reference) == len(other) == 4
    for a, b in zip(reference, other):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a)), (reference, other)


def _tiny_module():
    """tests/scripts/ddp_train_tiny.py as a module (model builder and data), for checks in this process."""
    spec = importlib.util.spec_from_file_location("ddp_train_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """The 1-process Trainer run (torchrun, batch 4) that every 2-process Trainer run must reproduce."""
    run = _torchrun(1, 4, tmp_path_factory.mktemp("one"))
    assert run["world_size"] == 1 and len(run["losses"]) == 4
    # training moved the loss, so equality is not a trivially constant curve
    assert run["losses"][0] != run["losses"][-1]
    return run


def test_two_process_ddp_matches_one_process_loss_curve(tmp_path, single_process):
    double = _torchrun(2, 2, tmp_path / "two")
    assert double["world_size"] == 2
    _assert_same_curve(single_process["losses"], double["losses"])
    assert double["threads"] == 1, "each of 2 processes on 2 cores must use 1 intra-op thread"


def test_accelerate_launch_two_processes_matches_one_process_loss_curve(tmp_path, single_process):
    """`accelerate launch` of the unchanged Trainer script. accelerate's `--cpu` launcher starts ONE process unless it
    can use mpirun (`--mpirun_hostfile`); its torchrun-based launcher is `--multi_gpu`, which needs no GPU: the
    script's `--use_cpu` makes Trainer's Accelerator pick gloo on CPU."""
    pytest.importorskip("accelerate")
    env = _env()
    env["HF_HOME"] = str(tmp_path / "hf_home")  # no user default_config.yaml can change the launch
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        str(SCRIPT), *_trainer_args(tmp_path / "accelerate", 2),
    ]
    _run(command, "accelerate launch", env)
    double = json.loads((tmp_path / "accelerate" / "losses.json").read_text())
    assert double["world_size"] == 2
    _assert_same_curve(single_process["losses"], double["losses"])
    assert double["threads"] == 1, "accelerate launch must give each of 2 processes 1 intra-op thread"


def _probe_loss(model, ids) -> float:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def _load_checkpoint(path: Path):
    from mamba_zoo import BlackMambaForCausalLM

    model, info = BlackMambaForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model


def test_trainer_fsdp_two_processes(tmp_path, single_process):
    """Trainer `--fsdp` with `transformer_layer_cls_to_wrap: ["MambaBlock"]`, 2 processes on CPU.

    accelerate (1.x) turns FSDP on only for accelerator distributed types (MULTI_GPU, MULTI_XPU, ...): with
    `--use_cpu` its state is MULTI_CPU, it drops the FSDP plugin and Trainer silently trains with DDP. The test checks
    what does run (finite losses equal to the 1-process curve, saved model loads with `from_pretrained` and matches
    the trained one) and then skips with the reason it detected; it runs in full once accelerate shards on CPU."""
    pytest.importorskip("accelerate")
    fsdp_config = tmp_path / "fsdp_config.json"
    fsdp_config.write_text(json.dumps({"transformer_layer_cls_to_wrap": ["MambaBlock"]}))
    output_dir = tmp_path / "fsdp"
    script_args = _trainer_args(output_dir, 2) + ["--fsdp", "--fsdp_config", str(fsdp_config)]
    _run(_torchrun_command(2, FSDP_TRAINER_SCRIPT, script_args), "torchrun (Trainer --fsdp)")
    run = json.loads((output_dir / "fsdp.json").read_text())

    assert run["world_size"] == 2 and run["threads"] == 1
    assert all(math.isfinite(loss) for loss in run["losses"])
    _assert_same_curve(single_process["losses"], run["losses"])  # DDP and FSDP both reproduce the global batch
    model = _load_checkpoint(output_dir / "final")
    probe = _tiny_module().TokenDataset().ids[:4]
    assert abs(_probe_loss(model, probe) - run["probe_loss"]) < 1e-5, "saved checkpoint is not the trained model"

    if not run["fsdp_enabled"]:
        assert run["wrapped_mamba_blocks"] == 0 and run["sharded_params"] == 0
        pytest.skip(
            f"Trainer --fsdp on CPU: accelerate {run['accelerate']} set distributed_type={run['distributed_type']} "
            "and created no FSDP plugin (it does so only for accelerator distributed types), so Trainer trained "
            "with DDP; see test_fsdp2_fully_shard_mamba_blocks_on_cpu_gloo for FSDP2 itself on CPU"
        )
    assert run["fsdp_version"] == 2
    assert run["wrapped_mamba_blocks"] == run["mamba_blocks"] == 4
    assert run["sharded_params"] > 0


def _plain_loop_losses(module, steps: int = 4, global_batch: int = 4):
    """fsdp2_loop_tiny.py's training without any distribution (1 process, whole global batch), 1 thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = module.build_model("reference")
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        data = module.TokenDataset().ids
        losses = []
        for step in range(steps):
            batch = data[step * global_batch:(step + 1) * global_batch]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        return losses, _probe_loss(model, data[:4])
    finally:
        torch.set_num_threads(threads)


def test_fsdp2_fully_shard_mamba_blocks_on_cpu_gloo(tmp_path):
    """FSDP2 itself on CPU: `fully_shard` on every `MambaBlock` and the root, gloo, 2 processes x batch 2, AdamW.

    Same losses as the unsharded 1-process loop; the gathered full state dict saves with `save_pretrained` and loads
    back with `from_pretrained`. Runs the numba CPU scan kernels (kernel_backend="cpu"), which must leave parameter storage
    resizable (see the test below)."""
    output_dir = tmp_path / "fsdp2"
    output_dir.mkdir()
    script_args = ["--output_dir", str(output_dir), "--kernel_backend", "cpu"]
    _run(_torchrun_command(2, FSDP2_LOOP_SCRIPT, script_args), "torchrun (fully_shard loop)")
    run = json.loads((output_dir / "fsdp2.json").read_text())

    assert run["world_size"] == 2 and run["threads"] == 1
    assert run["wrapped_mamba_blocks"] == run["mamba_blocks"] == 4
    assert run["sharded_params"] == run["params"] > 0, "every parameter must be sharded over the 2 ranks"
    assert not run["missing"] and not run["unexpected"], run

    module = _tiny_module()
    plain_losses, plain_probe = _plain_loop_losses(module)
    assert plain_losses[0] != plain_losses[-1]
    _assert_same_curve(plain_losses, run["losses"])
    assert abs(plain_probe - run["probe_loss"]) < 1e-4, (plain_probe, run["probe_loss"])
    model = _load_checkpoint(output_dir / "final")
    assert abs(_probe_loss(model, module.TokenDataset().ids[:4]) - run["probe_loss"]) < 1e-5


def test_cpu_scan_kernels_leave_parameter_storage_resizable():
    """FSDP2 frees unsharded parameters with `storage.resize_(0)`: the numba kernels must not view parameters with
    `Tensor.numpy()`, which marks a storage non-resizable for good."""
    pytest.importorskip("numba")
    from mamba_zoo.mamba_layers import MambaMixer

    torch.manual_seed(0)
    mixer = MambaMixer(d_model=8, d_state=4, backend="cpu")
    x = torch.randn(1, 6, 8, requires_grad=True)
    mixer(x).sum().backward()
    frozen = []
    for name, param in mixer.named_parameters():
        storage = param.untyped_storage()
        try:
            storage.resize_(storage.nbytes())  # a no-op when resizable, as FSDP2's free/alloc need
        except RuntimeError:
            frozen.append(name)
    assert not frozen, f"parameters with non-resizable storage after the numba scan: {frozen}"


def test_user_training_script_under_torchrun_finishes_cleanly(tmp_path):
    """The documented `torchrun --nproc_per_node 2 training/train_causal_lm.py ...` on CPU: both processes train,
    rank 0 writes metrics and the checkpoint, and the launcher sees exit code 0 (the script ends with
    `end_distributed_run()`, which leaves without gloo's occasional exit-time abort)."""
    script = Path(__file__).resolve().parents[1] / "training" / "train_causal_lm.py"
    out = tmp_path / "lm"
    args = ["--output_dir", str(out), "--hidden_size", "32", "--num_layers", "2", "--ffn_hidden_size", "32",
            "--num_experts", "2", "--num_sentences", "300", "--vocab_size", "300", "--block_size", "32",
            "--max_steps", "3", "--per_device_train_batch_size", "2", "--use_cpu", "--logging_steps", "1"]
    _run(_torchrun_command(2, script, args), "torchrun training/train_causal_lm.py")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["train_tokens_seen"] == 3 * 2 * 2 * 32  # global batch = 2 processes x 2
    assert (out / "model.safetensors").is_file()
