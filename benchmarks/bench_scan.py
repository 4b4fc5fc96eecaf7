#!/usr/bin/env python
"""Selective-scan and Mamba-mixer benchmarks on CPU, measured side by side in one run.

Scan table (batch 4, dim 384, N 16, fp32 by default), forward and forward+backward, for:

- ``cpu``: mamba-zoo's fused numba kernel (``selective_scan_fn(..., backend="cpu")``). Its ``fwd`` row runs without
  grad, i.e. the forward-only inference kernel; a training step runs the checkpointing training forward instead, so the
  ``fwd+bwd`` row also times that forward alone (``cpu train fwd``: inputs that require grad, no backward) and
  reports ``cpu bwd/fwd`` = (``fwd+bwd`` - ``train fwd``) / ``train fwd``, the backward's cost relative to the
  forward a training step actually runs;
- ``reference``: mamba-zoo's PyTorch reference (a loop over time, autograd for the backward);
- ``ref_algo``: mamba-ssm's ``selective_scan_ref`` algorithm, re-implemented below: it
  materialises ``deltaA`` and ``deltaB_u`` as ``(batch, dim, L, N)`` and loops over L in Python.

Mixer table (``--mixer``; batch 4, d_model 192): mamba-zoo's ``MambaMixer`` against transformers'
``MambaMixer`` on its default CPU path and with ``use_mambapy=True`` (needs ``pip install mambapy``).

Inference table (``--inference``; no grad, ``--batch`` / ``--dim`` as above): the forward-only
kernels against the training kernels that no-grad calls ran before them
(``cpu_scan_kernels.INFERENCE_KERNELS = False``): the scan on ``(batch, dim, L)`` inputs
(``selective_scan_fn(backend="cpu")``), the scan on time-major inputs (the mixer's layout), and a
bidirectional ``MambaMixer`` (d_model ``dim / 2``) on its general path vs its fused time-major path.

How things are measured:
- time: each table row (one L, one pass) runs in a fresh subprocess holding all its methods, so
  they are measured side by side in one process (same thread count as this process unless
  ``--threads``). After a small warm-up call per method (numba JIT / cache load), the methods
  are timed round-robin (A, B, C, A, B, C, ...) so that load from elsewhere hits them alike;
  the table shows each method's best (minimum) wall time.
- peak memory: the growth of the process' resident set during a method's first full-size call:
  the kernel's high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs`` just before
  the call and read after it, minus ``VmRSS`` before it. That counts everything the call
  allocates (torch, numpy, numba) and nothing allocated before (inputs, parameters). Where
  ``/proc/self/clear_refs`` is not writable the column falls back to ``ru_maxrss`` growth and is
  marked with ``*``.

Usage::

    python benchmarks/bench_scan.py                      # scan table at L = 512 2048 8192
    python benchmarks/bench_scan.py --quick              # L = 512 only, fewer repeats
    python benchmarks/bench_scan.py --mixer              # also the MambaMixer table
    python benchmarks/bench_scan.py --inference --batch 2 --lengths 8192   # no-grad: old vs new
    python benchmarks/bench_scan.py --lengths 2048 --slow-max-length 8192
    python benchmarks/bench_scan.py --compare-base HEAD --threads 1 --lengths 2048   # training kernels: REV vs tree

``--compare-base REV``: the training forward and backward of REV's ``cpu_scan_kernels.py`` (copied by ``git show``
into a temporary folder as the module ``base_kernels``) against the working tree's, in one fresh process per L,
interleaved (base, new, base, new, ...); prints each one's best forward, backward and bwd/fwd, and the largest
relative difference of the output and of every gradient (new vs base).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

_REPO_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
if os.path.isdir(_REPO_SRC) and _REPO_SRC not in sys.path:
    sys.path.insert(0, _REPO_SRC)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


# ----------------------------------------------------------------------------------------------
# mamba-ssm's selective_scan_ref algorithm (re-implemented here as the anchor; not library code)
# ----------------------------------------------------------------------------------------------


def selective_scan_ref_algorithm(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                 delta_softplus=False, return_last_state=False):
    """mamba-ssm's ``selective_scan_ref`` algorithm for real A and 3-D or grouped 4-D B/C.

    Builds ``deltaA = exp(delta * A)`` and ``deltaB_u = delta * B * u`` as ``(batch, dim, L, N)``
    tensors up front, then steps the state with a Python loop over L.
    """
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    B = B.float()
    C = C.float()
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 3:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)  # "B G N L -> B (G H) N L"
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    last_state = None
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if C.dim() == 3:
            y = torch.einsum("bdn,bn->bd", x, C[:, :, i])
        else:
            y = torch.einsum("bdn,bdn->bd", x, C[:, :, :, i])
        if i == u.shape[2] - 1:
            last_state = x
        ys.append(y)
    y = torch.stack(ys, dim=2)  # (batch, dim, L)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, last_state)


# ----------------------------------------------------------------------------------------------
# Measurement helpers (run inside the worker subprocess)
# ----------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def first_call(fn) -> dict:
    """Run ``fn`` once: wall time (s) and peak resident-set growth (MiB) during the call."""
    gc.collect()
    exact = _reset_peak_rss()
    if exact:
        before = _proc_status_kib("VmRSS")
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    if exact:
        peak = _proc_status_kib("VmHWM") - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"times_s": [elapsed], "peak_mib": peak / 1024.0, "peak_exact": exact}


def measure_side_by_side(calls: dict, repeats: dict) -> dict:
    """Measure several callables in this process: memory from each one's first call, then
    round-robin repeats (A, B, C, A, B, C, ...) so that load on the machine hits all alike.

    calls: name -> zero-argument callable; repeats: name -> number of timed calls (>= 1).
    Returns name -> {"time_s": best, "times_s": [...], "peak_mib": ..., "peak_exact": ...}.
    """
    results = {name: first_call(fn) for name, fn in calls.items()}
    for round_index in range(1, max(repeats.values())):
        for name, fn in calls.items():
            if round_index < repeats[name]:
                gc.collect()
                start = time.perf_counter()
                fn()
                results[name]["times_s"].append(time.perf_counter() - start)
    for r in results.values():
        r["time_s"] = min(r["times_s"])
    return results


def make_scan_inputs(batch, dim, n_state, length, seed=0, requires_grad=False):
    """Realistic Mamba-like scan inputs: S4D-real A, softplus time steps around 0.001..0.1."""
    gen = torch.Generator().manual_seed(seed)
    A = -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1)
    A = A * torch.exp(0.1 * torch.randn(dim, n_state, generator=gen))
    inputs = dict(
        u=torch.randn(batch, dim, length, generator=gen),
        delta=0.1 * torch.randn(batch, dim, length, generator=gen),
        A=A,
        B=torch.randn(batch, n_state, length, generator=gen),
        C=torch.randn(batch, n_state, length, generator=gen),
        D=torch.ones(dim),
        z=torch.randn(batch, dim, length, generator=gen),
        delta_bias=torch.log(torch.expm1(torch.rand(dim, generator=gen) * 0.099 + 0.001)),
    )
    if requires_grad:
        for t in inputs.values():
            t.requires_grad_(True)
    return inputs


def _scan_callable(method: str):
    from mamba_zoo.selective_scan import selective_scan_fn

    if method == "cpu":
        return lambda **kw: selective_scan_fn(**kw, delta_softplus=True, backend="cpu")
    if method == "reference":
        return lambda **kw: selective_scan_fn(**kw, delta_softplus=True, backend="reference")
    if method == "ref_algo":
        return lambda **kw: selective_scan_ref_algorithm(**kw, delta_softplus=True)
    raise ValueError(f"unknown scan method {method!r}")


def scan_worker(spec: dict) -> dict:
    """All requested scan methods at one (L, pass), side by side in this process. ``cpu_train_fwd``: the cpu
    kernel's forward on inputs that require grad (the training forward, with checkpoints), without the backward."""
    backward = spec["mode"] == "fwd+bwd"
    shape = (spec["batch"], spec["dim"], spec["n_state"])
    warm = make_scan_inputs(*shape, 8, requires_grad=backward)
    inputs = make_scan_inputs(*shape, spec["length"], requires_grad=backward)

    def runner(fn, kw, forward_only=False):
        def run():
            if forward_only:
                fn(**kw)
            elif backward:
                for t in kw.values():
                    t.grad = None
                fn(**kw).sum().backward()
                for t in kw.values():
                    t.grad = None
            else:
                with torch.no_grad():
                    fn(**kw)
        return run

    calls = {}
    for method in spec["methods"]:
        train_forward = method == "cpu_train_fwd"
        fn = _scan_callable("cpu" if train_forward else method)
        runner(fn, warm)()  # numba JIT / cache load, lazy imports
        calls[method] = runner(fn, inputs, forward_only=train_forward)
    return measure_side_by_side(calls, spec["repeats"])


# ----------------------------------------------------------------------------------------------
# MambaMixer: mamba-zoo vs transformers
# ----------------------------------------------------------------------------------------------


def _build_mixer(impl: str, d_model: int):
    """``ours`` or ``hf`` / ``hf_mambapy`` (transformers' MambaMixer); identical weights."""
    torch.manual_seed(0)
    from mamba_zoo.mamba_layers import MambaMixer as ZooMixer

    ours = ZooMixer(d_model, d_state=16, d_conv=4, expand=2, layer_idx=0)
    if impl == "ours":
        return ours
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer as HFMixer

    config = MambaConfig(hidden_size=d_model, state_size=16, conv_kernel=4, expand=2,
                         use_mambapy=(impl == "hf_mambapy"), num_hidden_layers=1)
    theirs = HFMixer(config, layer_idx=0)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same names, same weights
    return theirs


def mixer_worker(spec: dict) -> dict:
    """All requested mixers at one (L, pass), side by side in this process."""
    backward = spec["mode"] == "fwd+bwd"
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(spec["batch"], spec["length"], spec["d_model"], generator=gen)
    warm = torch.randn(spec["batch"], 8, spec["d_model"], generator=gen)

    def runner(mixer, inp):
        def run():
            if backward:
                mixer.zero_grad(set_to_none=True)
                mixer(inp).sum().backward()
                mixer.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    mixer(inp)
        return run

    calls = {}
    for impl in spec["impls"]:
        mixer = _build_mixer(impl, spec["d_model"]).train(backward)
        runner(mixer, warm)()
        calls[impl] = runner(mixer, x)
    return measure_side_by_side(calls, spec["repeats"])


def mixer_parity(d_model: int, length: int = 64) -> dict:
    """Max |difference| of outputs and of in_proj gradients, ours vs transformers (both paths)."""
    x = torch.randn(2, length, d_model, generator=torch.Generator().manual_seed(2))
    results = {}
    ref_out, ref_grad = None, None
    for impl in ("ours", "hf", "hf_mambapy"):
        mixer = _build_mixer(impl, d_model).train()
        out = mixer(x)
        out.pow(2).mean().backward()
        if ref_out is None:
            ref_out, ref_grad = out.detach(), mixer.in_proj.weight.grad
            continue
        results[impl] = ((out.detach() - ref_out).abs().max().item(),
                         (mixer.in_proj.weight.grad - ref_grad).abs().max().item())
    return results


# ----------------------------------------------------------------------------------------------
# Inference (no grad): forward-only kernels vs the training kernels
# ----------------------------------------------------------------------------------------------

INFERENCE_METHODS = ("scan_train_kernel", "scan_inference", "scan_inference_tm",
                     "mixer_general", "mixer_fused")


def inference_worker(spec: dict) -> dict:
    """The scan and a bidirectional mixer without grad, old (training kernels) vs new, in this process."""
    from mamba_zoo import cpu_scan_kernels as kernels
    from mamba_zoo.mamba_layers import MambaMixer
    from mamba_zoo.selective_scan import selective_scan_fn

    batch, dim, length = spec["batch"], spec["dim"], spec["length"]
    inputs = make_scan_inputs(batch, dim, spec["n_state"], length)
    tm = {k: (v.transpose(1, 2).contiguous() if k in ("u", "delta", "z", "B", "C") else v)
          for k, v in inputs.items()}
    torch.manual_seed(0)
    mixer = MambaMixer(dim // 2, d_state=spec["n_state"], bidirectional=True).eval()
    x = torch.randn(batch, length, dim // 2, generator=torch.Generator().manual_seed(1))

    def with_kernels(enabled, fn):
        def run():
            kernels.INFERENCE_KERNELS = enabled
            try:
                with torch.no_grad():
                    fn()
            finally:
                kernels.INFERENCE_KERNELS = True
        return run

    scan = lambda: selective_scan_fn(**inputs, delta_softplus=True, backend="cpu")  # noqa: E731
    calls = {
        "scan_train_kernel": with_kernels(False, scan),
        "scan_inference": with_kernels(True, scan),
        "scan_inference_tm": with_kernels(True, lambda: kernels.selective_scan_inference_time_major(
            **tm, delta_softplus=True)),
        "mixer_general": with_kernels(False, lambda: mixer(x)),
        "mixer_fused": with_kernels(True, lambda: mixer(x)),
    }
    for run in calls.values():
        run()  # numba JIT / cache load
    return measure_side_by_side(calls, {m: spec["repeats"] for m in calls})


def bench_inference(args) -> None:
    rows, errors = [], []
    for length in args.lengths:
        spec = dict(repeats=args.repeats, length=length, batch=args.batch, dim=args.dim,
                    n_state=args.state)
        results = _cell_results("inference", INFERENCE_METHODS, spec, args)
        errors += [f"L={length}: {r['error']}" for r in results.values() if "error" in r]
        get = results.get
        rows.append([length] + [_fmt_time(get(m)) for m in INFERENCE_METHODS]
                    + [_ratio(get("scan_train_kernel"), get("scan_inference")),
                       _ratio(get("scan_train_kernel"), get("scan_inference_tm")),
                       _ratio(get("mixer_general"), get("mixer_fused"))])
    notes = ["scan_train_kernel / mixer_general: INFERENCE_KERNELS = False (the checkpointing "
             "training kernel, as no-grad calls ran before the forward-only kernels); scan_inference: "
             "(batch, dim, L) inputs; scan_inference_tm: time-major (batch, L, dim) inputs.",
             f"time: best of {args.repeats} calls, all methods in one fresh process, interleaved."]
    notes.extend(sorted(set(errors)))
    print_table(
        f"no-grad inference, scan batch {args.batch}, dim {args.dim}, N {args.state}; bidirectional "
        f"MambaMixer d_model {args.dim // 2}; fp32, {args.threads} threads",
        ["L", "scan train kernel", "scan inference", "scan inference TM", "mixer general",
         "mixer fused", "scan old/new", "scan TM old/new", "mixer old/new"],
        rows, notes)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def run_in_subprocess(kind: str, spec: dict, threads: int, timeout: float) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env["NUMBA_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", kind, json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {proc.returncode}: {tail[0][:120]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_time(r):
    if r is None:
        return "skipped"
    if "error" in r:
        return "error"
    t = r["time_s"]
    return f"{t * 1e3:8.1f} ms" if t < 10 else f"{t:8.2f} s "


def _fmt_mem(r):
    if r is None or "error" in r:
        return "-"
    return f"{r['peak_mib']:8.1f}{'' if r['peak_exact'] else '*'}"


def _backward_ratio(forward_backward, forward):
    """(forward+backward - forward) / forward: the backward's cost in forwards."""
    if not forward_backward or not forward or "error" in forward_backward or "error" in forward:
        return "-"
    return f"{(forward_backward['time_s'] - forward['time_s']) / forward['time_s']:.2f}"


def _ratio(slow, fast):
    if not slow or not fast or "error" in slow or "error" in fast:
        return "-"
    return f"{slow['time_s'] / fast['time_s']:.1f}x"


def print_table(title, columns, rows, notes):
    print()
    print(title)
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) for i, c in enumerate(columns)]
    print("  ".join(str(c).rjust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))
    for n in notes:
        print("  note:", n)
    sys.stdout.flush()


def _cell_results(kind, names, spec, args):
    """Run one subprocess for the given names; name -> result, or {"error": ...} for all."""
    if not names:
        return {}
    out = run_in_subprocess(kind, spec, args.threads, args.timeout)
    if "error" in out:
        return {n: out for n in names}
    return out


def bench_scan(args) -> None:
    methods = ("cpu", "reference", "ref_algo")
    rows, notes, errors = [], [], []
    for length in args.lengths:
        for mode in ("fwd", "fwd+bwd"):
            limit = args.slow_max_length if mode == "fwd+bwd" else args.slow_fwd_max_length
            run_methods = [m for m in methods if m == "cpu" or length <= limit]
            if mode == "fwd+bwd" and length > args.ref_algo_bwd_max_length:
                run_methods = [m for m in run_methods if m != "ref_algo"]
            if mode == "fwd+bwd":
                run_methods.insert(1, "cpu_train_fwd")
            repeats = {m: args.repeats if m.startswith("cpu") else args.slow_repeats for m in run_methods}
            spec = dict(methods=run_methods, repeats=repeats, mode=mode, length=length,
                        batch=args.batch, dim=args.dim, n_state=args.state)
            results = _cell_results("scan", run_methods, spec, args)
            errors += [f"{m} {mode} L={length}: {r['error']}" for m, r in results.items()
                       if "error" in r]
            get = results.get
            rows.append([length, mode]
                        + [_fmt_time(get(m)) for m in methods]
                        + [_fmt_time(get("cpu_train_fwd")) if mode == "fwd+bwd" else "-",
                           _backward_ratio(get("cpu"), get("cpu_train_fwd")) if mode == "fwd+bwd" else "-"]
                        + [_fmt_mem(get(m)) for m in methods]
                        + [_ratio(get("ref_algo"), get("cpu")),
                           _ratio(get("reference"), get("cpu"))])
    notes.append(f"'skipped': ref_algo forward+backward above L={args.ref_algo_bwd_max_length}: "
                 "its backward is quadratic in L (each step's slice of a (batch, dim, L, N) "
                 "tensor gets a full-size gradient), like transformers' default Mamba path.")
    notes.append(f"'skipped': reference/ref_algo forward+backward above L={args.slow_max_length}"
                 f" and forward above L={args.slow_fwd_max_length} (--slow-max-length, "
                 "--slow-fwd-max-length); ref_algo builds 2 (batch, dim, L, N) float32 tensors "
                 "(plus their gradients in the backward).")
    notes.append("cpu fwd: no grad, the forward-only inference kernel; cpu train fwd: the training forward (inputs "
                 "require grad: checkpoints, autograd graph) without backward; cpu bwd/fwd: (cpu fwd+bwd - cpu "
                 "train fwd) / cpu train fwd.")
    notes.append(f"time: best of {args.repeats} (cpu) / {args.slow_repeats} (others) calls, all "
                 "methods of a row in one fresh process, repeats interleaved; MiB: growth of the "
                 "resident set during the first call (VmHWM reset via /proc/self/clear_refs).")
    notes.extend(sorted(set(errors)))
    print_table(
        f"selective scan, batch {args.batch}, dim {args.dim}, N {args.state}, fp32, "
        f"{args.threads} threads (torch {torch.__version__})",
        ["L", "pass", "cpu", "reference", "ref_algo", "cpu train fwd", "cpu bwd/fwd", "cpu MiB", "reference MiB",
         "ref_algo MiB",
         "ref_algo/cpu", "reference/cpu"],
        rows, notes)


def compare_worker(spec: dict) -> dict:
    """``--compare-base``: REV's training kernels (``spec["base_dir"]/base_kernels.py``) vs the working tree's."""
    sys.path.insert(0, spec["base_dir"])
    import base_kernels
    from mamba_zoo import cpu_scan_kernels

    modules = {"base": base_kernels, "new": cpu_scan_kernels}
    inputs = make_scan_inputs(spec["batch"], spec["dim"], spec["n_state"], spec["length"], requires_grad=True)
    times = {name: {"fwd": [], "bwd": []} for name in modules}
    results = {}
    for round_index in range(spec["rounds"] + 1):  # round 0: JIT / cache load, not timed
        for name, module in modules.items():
            for t in inputs.values():
                t.grad = None
            gc.collect()
            start = time.perf_counter()
            out = module.selective_scan_cpu(**inputs, delta_softplus=True)
            middle = time.perf_counter()
            out.sum().backward()
            end = time.perf_counter()
            if round_index > 0:
                times[name]["fwd"].append(middle - start)
                times[name]["bwd"].append(end - middle)
            results[name] = [out.detach()] + [inputs[k].grad.clone() for k in inputs]
    diffs = {key: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
             for key, a, b in zip(["out"] + list(inputs), results["new"], results["base"])}
    return {"times": {name: {k: min(v) for k, v in t.items()} for name, t in times.items()}, "diffs": diffs}


def bench_compare(args) -> None:
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "-C", root, "show", f"{args.compare_base}:src/mamba_zoo/cpu_scan_kernels.py"],
                            check=True, capture_output=True, text=True).stdout
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "base_kernels.py"), "w") as f:
            f.write(source)
        for length in args.lengths:
            spec = dict(base_dir=folder, rounds=args.repeats, length=length, batch=args.batch, dim=args.dim,
                        n_state=args.state)
            out = run_in_subprocess("compare", spec, args.threads, args.timeout)
            if "error" in out:
                rows.append([length, "error", "-", "-", "-", "-", "-", "-"])
                notes.append(f"L={length}: {out['error']}")
                continue
            base, new = out["times"]["base"], out["times"]["new"]
            rows.append([length] + [f"{t * 1e3:.1f} ms" for t in (base["fwd"], base["bwd"])]
                        + [f"{base['bwd'] / base['fwd']:.2f}"]
                        + [f"{t * 1e3:.1f} ms" for t in (new["fwd"], new["bwd"])]
                        + [f"{new['bwd'] / new['fwd']:.2f}", f"{max(out['diffs'].values()):.1e}"])
    notes.append(f"base: {args.compare_base}'s cpu_scan_kernels.py, new: the working tree's; train fwd: forward on "
                 f"inputs that require grad; bwd: out.sum().backward(); best of {args.repeats} interleaved rounds; "
                 "max rel diff: largest relative difference of the output and all gradients, new vs base.")
    print_table(f"training kernels, {args.compare_base} vs working tree, batch {args.batch}, dim {args.dim}, "
                f"N {args.state}, fp32, {args.threads} threads",
                ["L", "base train fwd", "base bwd", "base bwd/fwd", "new train fwd", "new bwd", "new bwd/fwd",
                 "max rel diff"], rows, notes)


def bench_mixer(args) -> None:
    """mamba-zoo MambaMixer vs transformers' MambaMixer (default CPU path and use_mambapy=True).

    transformers' default path backpropagates through a Python loop whose backward grows
    quadratically with L: it only runs at L <= --hf-default-max-length (512).
    """
    try:
        from mamba_zoo.mamba_layers import MambaMixer  # noqa: F401
    except ImportError as err:
        print(f"\nmixer benchmark skipped: {err}")
        return
    from transformers.utils.import_utils import is_mambapy_available

    impls = ["ours", "hf", "hf_mambapy"]
    rows, notes, errors = [], [], []
    if not is_mambapy_available():
        notes.append("mambapy is not installed: transformers' use_mambapy=True silently runs its "
                     "default loop; `pip install mambapy` for the real comparison.")
    parity = mixer_parity(args.d_model)
    for impl, (d_out, d_grad) in parity.items():
        notes.append(f"parity vs ours ({impl}, L=64): max |out diff| {d_out:.2e}, "
                     f"max |in_proj grad diff| {d_grad:.2e}")
    for length in args.mixer_lengths:
        for mode in ("fwd", "fwd+bwd"):
            run_impls = [i for i in impls
                         if not (i == "hf" and mode == "fwd+bwd"
                                 and length > args.hf_default_max_length)
                         and not (i == "hf_mambapy" and length > args.mambapy_max_length)]
            repeats = {i: args.repeats if i == "ours" else args.slow_repeats for i in run_impls}
            spec = dict(impls=run_impls, repeats=repeats, mode=mode, length=length,
                        batch=args.batch, d_model=args.d_model)
            results = _cell_results("mixer", run_impls, spec, args)
            errors += [f"{i} {mode} L={length}: {r['error']}" for i, r in results.items()
                       if "error" in r]
            get = results.get
            rows.append([length, mode]
                        + [_fmt_time(get(i)) for i in impls]
                        + [_fmt_mem(get(i)) for i in impls]
                        + [_ratio(get("hf"), get("ours")),
                           _ratio(get("hf_mambapy"), get("ours"))])
    notes.append(f"'skipped': transformers default fwd+bwd above L={args.hf_default_max_length} "
                 f"(quadratic backward), use_mambapy above L={args.mambapy_max_length} "
                 "(materialises (batch, d_inner, L, N) several times).")
    notes.extend(sorted(set(errors)))
    print_table(
        f"MambaMixer, batch {args.batch}, d_model {args.d_model} (d_inner {2 * args.d_model}, "
        f"N 16), fp32, {args.threads} threads",
        ["L", "pass", "ours", "hf default", "hf mambapy", "ours MiB", "hf MiB", "mambapy MiB",
         "hf/ours", "mambapy/ours"],
        rows, notes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--quick", action="store_true", help="L=512 only, 2 repeats")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of fast methods")
    parser.add_argument("--slow-repeats", type=int, default=2,
                        help="timed calls of the slow baselines")
    parser.add_argument("--slow-max-length", type=int, default=2048,
                        help="longest L for reference/ref_algo forward+backward")
    parser.add_argument("--ref-algo-bwd-max-length", type=int, default=512,
                        help="longest L for ref_algo forward+backward (quadratic backward)")
    parser.add_argument("--slow-fwd-max-length", type=int, default=8192,
                        help="longest L for reference/ref_algo forward")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per table row")
    parser.add_argument("--mixer", action="store_true", help="also benchmark MambaMixer")
    parser.add_argument("--mixer-only", action="store_true")
    parser.add_argument("--inference", action="store_true",
                        help="only the no-grad table: forward-only kernels vs training kernels")
    parser.add_argument("--compare-base", metavar="REV",
                        help="only the training kernels: REV's cpu_scan_kernels.py vs the working tree's, interleaved")
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--mixer-lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--hf-default-max-length", type=int, default=512)
    parser.add_argument("--mambapy-max-length", type=int, default=2048)
    parser.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker:
        kind, spec = args._worker[0], json.loads(args._worker[1])
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        workers = {"scan": scan_worker, "mixer": mixer_worker, "inference": inference_worker,
                   "compare": compare_worker}
        result = workers[kind](spec)
        print(json.dumps(result))
        return

    if args.quick:
        args.lengths = [512]
        args.mixer_lengths = [512]
        args.repeats = 2
        args.slow_repeats = 1
    if args.inference:
        bench_inference(args)
        return
    if args.compare_base:
        bench_compare(args)
        return
    if not args.mixer_only:
        bench_scan(args)
    if args.mixer or args.mixer_only:
        bench_mixer(args)


if __name__ == "__main__":
    main()
