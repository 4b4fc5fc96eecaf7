"""Fused CPU selective-scan kernels (numba), forward and backward.

The training kernels run a block of ``TRAIN_BLOCK`` channels of one (batch, group) at a time, the channels being the
vector lanes and the block's state a small ``(N, TRAIN_BLOCK)`` buffer; no ``(batch, dim, L, N)`` tensor is ever built.
The forward pass saves the state every ``chunk`` steps (``checkpoints``: ``(batch, L / chunk, N, dim)``); the backward
pass recomputes the states of one chunk at a time from those checkpoints into a ``(chunk + 1, N, TRAIN_BLOCK)`` buffer
and sweeps the chunk in reverse, so memory stays O(batch * dim * N * L / chunk).

The ``exp`` of ``delta * A`` (batch * dim * L * N of them: the bulk of the work) uses float32
polynomials (Cephes ``expf``, about 1 ulp, or the cheaper ``2 ** x`` of ``_exp2f``) written so that LLVM vectorises
them; numba's own ``exp`` is a scalar libm call unless llvmlite was built with Intel SVML. Elementwise transcendental
work on whole buffers (softplus, sigmoid) goes through the flat ``*_inplace`` helpers, which vectorise.

Calls that need no gradient use forward-only kernels instead (:func:`selective_scan_inference_time_major`,
:func:`causal_conv1d_inference_time_major`): no checkpoints, the channels as the vector lanes, the state of a block of
channels in a small (N, block) buffer, time-major ``(batch, L, dim)`` data read in place (column slices of a
projection included), and an optional per-row time permutation, so a reversed branch walks time backwards without
flipping copies. ``MambaMixer`` runs its whole no-grad forward on them.

numba is optional: this module imports without it and :func:`is_available` says whether the
kernels can run. Kernels are compiled on first use and cached on disk (``cache=True``). The helpers they call
(``_expf``, ``_exp2f``, ...) are not cached themselves: a kernel compiled against a helper loaded from the disk
cache gets different machine code (different last bits) from one compiled against the same helper compiled in
memory, so results would depend on what earlier processes happened to compile first. Uncached, a helper is always
compiled in memory, and a kernel's code is the same whatever ran before; a cached kernel carries its helpers' code. The
helpers' fastmath flags are set explicitly (``_HELPER_MATH``) for the same reason: numba compiles a callee that sets none
with the flags of the first kernel that calls it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

try:
    import numba
    from llvmlite import ir as _llvm_ir
    from numba import njit, prange, types as _nb_types
    from numba.extending import intrinsic
except ImportError:  # numba is optional: the "cpu" backend is then unavailable
    numba = None

__all__ = ["is_available", "selective_scan_cpu", "selective_state_update_cpu", "DEFAULT_CHUNK",
           "selective_scan_inference_time_major", "causal_conv1d_inference_time_major",
           "inference_kernels_enabled", "INFERENCE_KERNELS"]

# Checkpoint interval of the forward pass (time steps between saved states).
DEFAULT_CHUNK = 64

# Channels per block of the training kernels (their vector lanes; a compile-time constant, so the loops over a block
# have a known trip count): 4 AVX-512 or 8 AVX2 float32 vectors.
TRAIN_BLOCK = 64

# Whether calls that need no gradient run the forward-only kernels (no checkpoints, vectorised
# across channels; MambaMixer's time-major path). False runs the training kernels instead (for
# A/B benchmarks and debugging); results agree to float32 rounding.
INFERENCE_KERNELS = True


def inference_kernels_enabled() -> bool:
    return numba is not None and INFERENCE_KERNELS


def is_available() -> bool:
    """True when numba imports, so the kernels can run."""
    return numba is not None


if numba is not None:
    _f32 = np.float32
    # Cephes expf constants (float32 so that numba keeps the arithmetic in float32).
    _EXP_HI = _f32(88.0)  # exp(88) < float32 max and keeps the exponent k <= 127
    _EXP_LO = _f32(-87.33)  # exp(-87.33) ~ 1.2e-38, the smallest normal float32
    _LOG2E = _f32(1.44269504088896341)
    _LN2_HI = _f32(0.693359375)
    _LN2_LO = _f32(-2.12194440e-4)
    _P0 = _f32(1.9875691500e-4)
    _P1 = _f32(1.3981999507e-3)
    _P2 = _f32(8.3334519073e-3)
    _P3 = _f32(4.1665795894e-2)
    _P4 = _f32(1.6666665459e-1)
    _P5 = _f32(5.0000001201e-1)
    _HALF = _f32(0.5)
    _ONE = _f32(1.0)
    _ZERO = _f32(0.0)
    _SOFTPLUS_THRESHOLD = _f32(20.0)  # torch.nn.functional.softplus: x > 20 -> x
    # The helpers' own math flags, set explicitly: a jitted callee without them inherits the fastmath flags of the
    # first kernel that compiles it, so the helpers' code (and every kernel's bits and speed) would depend on which
    # kernel happened to be compiled first in the process. FMA contraction only: no reassociation, which would undo
    # the Cody-Waite and Kahan tricks below.
    _HELPER_MATH = {"contract"}

    @intrinsic
    def _bits_to_f32(typingctx, bits):
        """Reinterpret an int32 as the float32 with the same bits (a register move)."""
        sig = _nb_types.float32(_nb_types.int32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _llvm_ir.FloatType())

        return sig, codegen

    @njit(fastmath=_HELPER_MATH, error_model="numpy")
    def _expf(x):
        """exp(x) in float32 (Cephes expf): exp(r) on the Cody-Waite reduced r, times 2**k from the exponent bits.
        Compiled without reassociation (_HELPER_MATH; its instructions keep those flags when LLVM inlines it into a
        kernel compiled with others), branch-free and with numpy's error model, so loops over it vectorise."""
        x = min(max(x, _EXP_LO), _EXP_HI)
        k = np.floor(x * _LOG2E + _HALF)
        r = x - k * _LN2_HI
        r = r - k * _LN2_LO
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        return (p * (r * r) + r + _ONE) * _bits_to_f32((np.int32(k) + 127) << 23)

    @njit(fastmath=_HELPER_MATH)
    def _exp_inplace(values, count):
        """values[:count] = exp(values[:count]) in float32."""
        for i in range(count):
            values[i] = _expf(values[i])

    # Cephes logf polynomial, for log(w) with w reduced to [sqrt(1/2), sqrt(2)).
    _SQRT2 = _f32(1.41421356237)
    _L0 = _f32(7.0376836292e-2)
    _L1 = _f32(-1.1514610310e-1)
    _L2 = _f32(1.1676998740e-1)
    _L3 = _f32(-1.2420140846e-1)
    _L4 = _f32(1.4249322787e-1)
    _L5 = _f32(-1.6668057665e-1)
    _L6 = _f32(2.0000714765e-1)
    _L7 = _f32(-2.4999993993e-1)
    _L8 = _f32(3.3333331174e-1)

    @njit(fastmath=_HELPER_MATH, error_model="numpy")
    def _log1p_unit(e):
        """log1p(e) for e in [0, 1] in float32 (branch-free, so loops over it vectorise)."""
        w = _ONE + e
        big = w > _SQRT2
        m = w * _HALF if big else w
        k = _ONE if big else _ZERO
        x = m - _ONE
        z = x * x
        p = (((((((_L0 * x + _L1) * x + _L2) * x + _L3) * x + _L4) * x + _L5) * x + _L6) * x
             + _L7) * x + _L8
        y = p * x * z + k * _LN2_LO - _HALF * z
        log_w = x + y + k * _LN2_HI
        # Kahan's trick: log1p(e) = log(w) * e / (w - 1) recovers the bits lost in 1 + e.
        denom = w - _ONE
        return e if denom == _ZERO else log_w * (e / denom)

    @njit(fastmath=_HELPER_MATH)
    def _log1p_unit_inplace(values, count):
        """values[:count] = log1p(values[:count]) for values in [0, 1] (float32, vectorisable)."""
        for i in range(count):
            values[i] = _log1p_unit(values[i])

    @njit(fastmath=_HELPER_MATH)
    def _softplus_inplace(values, scratch, grad, count, want_grad):
        """values[:count] = softplus(values[:count]) (torch semantics: x > 20 -> x).

        If want_grad, grad[:count] = sigmoid(x), the derivative (1 where x > 20).
        Uses softplus(x) = max(x, 0) + log1p(exp(-|x|)), which never overflows.
        """
        for i in range(count):
            scratch[i] = -abs(values[i])
        _exp_inplace(scratch, count)  # exp(-|x|) in (0, 1]
        if want_grad:
            for i in range(count):
                x = values[i]
                e = scratch[i]
                numerator = _ONE if x >= _ZERO else e
                grad[i] = _ONE if x > _SOFTPLUS_THRESHOLD else numerator / (_ONE + e)
        _log1p_unit_inplace(scratch, count)
        for i in range(count):
            x = values[i]
            values[i] = x if x > _SOFTPLUS_THRESHOLD else max(x, _ZERO) + scratch[i]

    @njit(fastmath=_HELPER_MATH)
    def _sigmoid_inplace(values, count):
        """values[:count] = sigmoid(values[:count])."""
        for i in range(count):
            values[i] = -values[i]
        _exp_inplace(values, count)
        for i in range(count):
            values[i] = _ONE / (_ONE + values[i])

    # Scalar forms of the helpers above (with _expf), for loops that fuse them with other work. Compiled
    # without reassociation (_HELPER_MATH; their instructions keep those flags when LLVM inlines them into a
    # kernel compiled with others), branch-free and with numpy's error model (a float division
    # by zero gives inf instead of a ZeroDivisionError check, which would stop vectorisation).
    # 2**f = exp(f ln 2) on [-1/2, 1/2]: Taylor terms (ln 2)**i / i!, truncation error < 1.2e-7.
    _E2_0 = _f32(1.0)
    _E2_1 = _f32(0.6931471805599453)
    _E2_2 = _f32(0.2402265069591007)
    _E2_3 = _f32(0.05550410866482158)
    _E2_4 = _f32(0.009618129107628477)
    _E2_5 = _f32(0.0013333558146428443)
    _E2_6 = _f32(0.00015403530393381606)
    _EXP2_LO = _f32(-126.0)
    _EXP2_HI = _f32(127.0)

    @njit(fastmath=_HELPER_MATH, error_model="numpy")
    def _exp2f(v):
        """2**v in float32: 2**round(v) from the exponent bits times a degree-6 polynomial in the rest.
        Cheaper than :func:`_expf` (no Cody-Waite reduction); exp(x) = _exp2f(x * log2(e)), where the extra
        rounding of the product costs a relative error of about |x| * 6e-8."""
        v = min(max(v, _EXP2_LO), _EXP2_HI)
        k = np.rint(v)
        f = v - k
        p = (((((_E2_6 * f + _E2_5) * f + _E2_4) * f + _E2_3) * f + _E2_2) * f + _E2_1) * f + _E2_0
        return p * _bits_to_f32((np.int32(k) + 127) << 23)

    @njit(fastmath=_HELPER_MATH, error_model="numpy")
    def _softplus1(x):
        """softplus(x), torch semantics (x > 20 -> x)."""
        sp = max(x, _ZERO) + _log1p_unit(_expf(-abs(x)))
        return x if x > _SOFTPLUS_THRESHOLD else sp

    @njit(fastmath=_HELPER_MATH, error_model="numpy")
    def _silu1(x):
        """x * sigmoid(x)."""
        return x / (_ONE + _expf(-x))

    @njit(fastmath=_HELPER_MATH, error_model="numpy")
    def _gather_chunk(src, b, c0, w, t0, n_steps, dst):
        """dst[k, c] = src[b, c0 + c, t0 + k] for the block's w channels and n_steps steps (channel-major ->
        (step, channel)); the padding lanes c >= w of dst read zeros. (Slices indexed by the loop counter: no
        negative-index wraparound per element.)"""
        for c in range(dst.shape[1]):
            if c < w:
                row = src[b, c0 + c, t0:t0 + n_steps]
                for k in range(n_steps):
                    dst[k, c] = row[k]
            else:
                for k in range(n_steps):
                    dst[k, c] = _ZERO

    @njit(fastmath=_HELPER_MATH, error_model="numpy")
    def _touch_chunk(src, b, c0, w, t_next, chunk):
        """The sum of one float per cache line (16 floats) of src[b, c0:c0 + w, t_next:t_next + chunk]: touching the
        next chunk's inputs lets their loads from memory overlap the current chunk's work."""
        touched = _ZERO
        for c in range(w):
            for k in range(0, chunk, 16):
                touched += src[b, c0 + c, t_next + k]
        return touched

    # The kernels below are compiled with reassociation and FMA contraction (and nothing else:
    # no nnan/ninf/approximate functions), which lets LLVM vectorise their length-N reductions
    # over the state. The precision-sensitive helpers above (exp, log1p, softplus) are separate
    # functions compiled without reassociation (_HELPER_MATH), so their Cody-Waite and Kahan tricks stay.
    _KERNEL_MATH = {"reassoc", "contract"}

    # Training kernels: channel-major (batch, dim, L) data, vectorised across the channels of a group. A task works on
    # blocks of TRAIN_BLOCK channels of one (batch, group); the state of a block is an (N, TRAIN_BLOCK) buffer, so every
    # inner loop runs over the block's channels with a trip count known when compiling (LLVM emits whole vectors, no
    # remainder loop). A group whose channel count is not a multiple of the block ends with a padded block: its padding
    # lanes hold zeros (u = 0, dout = 0, A = 0, zero state), stay exactly zero through the recurrence and contribute
    # nothing to the dB / dC sums; they are never written out. Decays are 2 ** (dt * A log2(e)) (`_exp2f`), the same
    # expression in the forward and in the backward's recomputation.

    @njit(parallel=True, cache=True, fastmath=_KERNEL_MATH, error_model="numpy")
    def _scan_forward_kernel(u, delta, A_t, Bm, Cm, D, z, delta_bias, has_D, has_z, has_bias,
                             softplus, chunk, out, last_state, checkpoints):
        """Forward scan that saves the state every ``chunk`` steps.

        u, delta, z, out: (batch, dim, L); A_t: (N, dim) (A transposed); Bm, Cm: (batch, G, L, N) (time-major);
        D, delta_bias: (dim,) (ignored unless has_*); last_state: (batch, dim, N);
        checkpoints: (batch, ceil(L / chunk), N, dim), the state before each chunk's first step.
        Tasks are (batch, group, block of TRAIN_BLOCK channels).
        """
        W = TRAIN_BLOCK
        batch, dim, L = u.shape
        N = A_t.shape[0]
        groups = Bm.shape[1]
        cpg = dim // groups
        bpg = (cpg + W - 1) // W
        n_chunks = checkpoints.shape[1]
        for task in prange(batch * groups * bpg):
            b = task // (groups * bpg)
            g = (task // bpg) % groups
            c0 = g * cpg + (task % bpg) * W
            w = min(W, (g + 1) * cpg - c0)
            h = np.zeros((N, W), dtype=np.float32)
            a_loc = np.zeros((N, W), dtype=np.float32)
            bias_loc = np.zeros(W, dtype=np.float32)
            skip_loc = np.zeros(W, dtype=np.float32)
            dt_flat = np.zeros(chunk * W, dtype=np.float32)  # flat, for the vectorised softplus
            dt_t = dt_flat.reshape((chunk, W))
            scratch = np.empty(chunk * W, dtype=np.float32)
            dtx_t = np.zeros((chunk, W), dtype=np.float32)
            y_t = np.zeros((chunk, W), dtype=np.float32)
            gate_t = np.zeros((chunk, W), dtype=np.float32)
            sink = np.zeros(1, dtype=np.float32)  # keeps the prefetching loads below
            for n in range(N):  # A * log2(e): the decays are 2 ** (dt * a_loc)
                for c in range(w):
                    a_loc[n, c] = A_t[n, c0 + c] * _LOG2E
            for c in range(w):
                bias_loc[c] = delta_bias[c0 + c] if has_bias else _ZERO
                skip_loc[c] = D[c0 + c] if has_D else _ZERO
            for ci in range(n_chunks):
                t0 = ci * chunk
                n_steps = min(chunk, L - t0)
                for n in range(N):
                    h_row = h[n]
                    for c in range(w):
                        checkpoints[b, ci, n, c0 + c] = h_row[c]
                _gather_chunk(delta, b, c0, w, t0, n_steps, dt_t)  # the chunk; padding lanes read zeros
                _gather_chunk(u, b, c0, w, t0, n_steps, dtx_t)
                if has_z:
                    _gather_chunk(z, b, c0, w, t0, n_steps, gate_t)
                if ci + 2 < n_chunks:  # touch the next chunk's inputs (see the backward kernel)
                    t_next = t0 + chunk
                    sink[0] += _touch_chunk(delta, b, c0, w, t_next, chunk) + _touch_chunk(u, b, c0, w, t_next, chunk)
                    if has_z:
                        sink[0] += _touch_chunk(z, b, c0, w, t_next, chunk)
                for k in range(n_steps):
                    dt_row = dt_t[k]
                    for c in range(W):
                        dt_row[c] += bias_loc[c]
                if softplus:
                    _softplus_inplace(dt_flat, scratch, scratch, n_steps * W, False)
                for k in range(n_steps):
                    dt_row = dt_t[k]
                    dtx_row = dtx_t[k]
                    y_row = y_t[k]
                    for c in range(W):
                        x = dtx_row[c]
                        dtx_row[c] = dt_row[c] * x
                        y_row[c] = skip_loc[c] * x
                    if has_z:
                        gate_row = gate_t[k]
                        for c in range(W):
                            gate_row[c] = _silu1(gate_row[c])
                for k in range(n_steps):
                    t = t0 + k
                    dt_row = dt_t[k]
                    dtx_row = dtx_t[k]
                    y_row = y_t[k]
                    B_row = Bm[b, g, t]
                    C_row = Cm[b, g, t]
                    for n in range(N):
                        b_n = B_row[n]
                        c_n = C_row[n]
                        h_row = h[n]
                        a_row = a_loc[n]
                        for c in range(W):
                            h_n = _exp2f(dt_row[c] * a_row[c]) * h_row[c] + dtx_row[c] * b_n
                            h_row[c] = h_n
                            y_row[c] += h_n * c_n
                    if has_z:
                        gate_row = gate_t[k]
                        for c in range(W):
                            y_row[c] = y_row[c] * gate_row[c]
                for c in range(w):
                    out_ch = out[b, c0 + c, t0:t0 + n_steps]
                    for k in range(n_steps):
                        out_ch[k] = y_t[k, c]
            for n in range(N):
                h_row = h[n]
                for c in range(w):
                    last_state[b, c0 + c, n] = h_row[c]

    @njit(parallel=True, cache=True, fastmath=_KERNEL_MATH, error_model="numpy")
    def _scan_backward_kernel(u, delta, A_t, Bm, Cm, D, z, delta_bias, has_D, has_z, has_bias,
                              softplus, chunk, checkpoints, dout, dlast, has_dlast, n_parts,
                              du, ddelta, dz, dA_lane, dD_lane, dbias_lane, dB_part, dC_part):
        """Backward scan: recompute each chunk's states from its checkpoint, then sweep it in reverse.

        Layouts as in `_scan_forward_kernel`. Tasks are (b, g, part): each part handles consecutive blocks of
        TRAIN_BLOCK channels of group g, one after another, and owns dB_part[b, g, part] / dC_part[b, g, part]
        ((L, N) each), so no two threads write the same memory. Per-channel gradients of parameters are written per
        lane (dA_lane (batch, dim, N), dD_lane / dbias_lane (batch, dim)) and summed over batch (and parts) by the
        caller.

        With adj = dLoss/dh_t (from y_t and, through the decay, from h_{t+1}):
        dC_t += dy_t h_t, dB_t += adj dt_t u_t, du_t = dy_t D + dt_t <adj, B_t>,
        d dt_t = <adj, A decay_t h_{t-1}> + u_t <adj, B_t>, dA += dt_t adj decay_t h_{t-1},
        and dLoss/dh_{t-1} = adj decay_t. The sums over the state (<., .>) are per channel, so they run along the
        vector lanes; only dB_t and dC_t sum across channels.
        """
        W = TRAIN_BLOCK
        batch, dim, L = u.shape
        N = A_t.shape[0]
        groups = Bm.shape[1]
        cpg = dim // groups
        bpg = (cpg + W - 1) // W
        blocks_per_part = (bpg + n_parts - 1) // n_parts
        n_chunks = checkpoints.shape[1]
        for task in prange(batch * groups * n_parts):
            b = task // (groups * n_parts)
            g = (task // n_parts) % groups
            part = task % n_parts
            states = np.zeros((chunk + 1, N, W), dtype=np.float32)  # states[k + 1] = h after step t0 + k
            decay = np.zeros((chunk, N, W), dtype=np.float32)
            a_loc = np.zeros((N, W), dtype=np.float32)  # A * log2(e)
            a_raw = np.zeros((N, W), dtype=np.float32)
            adjoint = np.zeros((N, W), dtype=np.float32)
            dA_acc = np.zeros((N, W), dtype=np.float32)
            dt_flat = np.zeros(chunk * W, dtype=np.float32)  # flat, for the vectorised softplus
            dt_t = dt_flat.reshape((chunk, W))
            dtg_flat = np.zeros(chunk * W, dtype=np.float32)  # d dt / d delta
            dtg_t = dtg_flat.reshape((chunk, W))
            scratch = np.empty(chunk * W, dtype=np.float32)
            x_t = np.zeros((chunk, W), dtype=np.float32)
            dtx_t = np.zeros((chunk, W), dtype=np.float32)
            dy_t = np.zeros((chunk, W), dtype=np.float32)  # dout, then dLoss/dy (before the gate)
            y_t = np.zeros((chunk, W), dtype=np.float32)
            z_t = np.zeros((chunk, W), dtype=np.float32)
            sig_flat = np.zeros(chunk * W, dtype=np.float32)  # sigmoid(z), flat for the vectorised helper
            sig_t = sig_flat.reshape((chunk, W))
            du_t = np.zeros((chunk, W), dtype=np.float32)
            dd_t = np.zeros((chunk, W), dtype=np.float32)
            dz_t = np.zeros((chunk, W), dtype=np.float32)
            adj_B = np.zeros(W, dtype=np.float32)
            a_adh = np.zeros(W, dtype=np.float32)
            bias_loc = np.zeros(W, dtype=np.float32)
            skip_loc = np.zeros(W, dtype=np.float32)
            dD_acc = np.zeros(W, dtype=np.float32)
            dbias_acc = np.zeros(W, dtype=np.float32)
            sink = np.zeros(1, dtype=np.float32)  # keeps the prefetching loads below
            for blk in range(part * blocks_per_part, min(bpg, (part + 1) * blocks_per_part)):
                c0 = g * cpg + blk * W
                w = min(W, (g + 1) * cpg - c0)
                for n in range(N):
                    for c in range(W):
                        a_raw[n, c] = A_t[n, c0 + c] if c < w else _ZERO
                        a_loc[n, c] = a_raw[n, c] * _LOG2E
                        adjoint[n, c] = dlast[b, c0 + c, n] if (has_dlast and c < w) else _ZERO
                        dA_acc[n, c] = _ZERO
                for c in range(W):
                    bias_loc[c] = delta_bias[c0 + c] if (has_bias and c < w) else _ZERO
                    skip_loc[c] = D[c0 + c] if (has_D and c < w) else _ZERO
                    dD_acc[c] = _ZERO
                    dbias_acc[c] = _ZERO
                for ci in range(n_chunks - 1, -1, -1):
                    t0 = ci * chunk
                    n_steps = min(chunk, L - t0)
                    _gather_chunk(delta, b, c0, w, t0, n_steps, dt_t)  # the chunk; padding lanes read zeros
                    _gather_chunk(u, b, c0, w, t0, n_steps, x_t)
                    _gather_chunk(dout, b, c0, w, t0, n_steps, dy_t)
                    if has_z:
                        _gather_chunk(z, b, c0, w, t0, n_steps, z_t)
                    if ci > 0:
                        # Touch one float per cache line of the next chunk's inputs, so that their loads from memory
                        # overlap this chunk's work: the sweep runs backwards in time, against the hardware
                        # prefetchers, across a row of memory per channel.
                        t_next = t0 - chunk
                        sink[0] += (_touch_chunk(delta, b, c0, w, t_next, chunk)
                                    + _touch_chunk(u, b, c0, w, t_next, chunk)
                                    + _touch_chunk(dout, b, c0, w, t_next, chunk))
                        if has_z:
                            sink[0] += _touch_chunk(z, b, c0, w, t_next, chunk)
                    for k in range(n_steps):
                        dt_row = dt_t[k]
                        for c in range(W):
                            dt_row[c] += bias_loc[c]
                    if softplus:
                        _softplus_inplace(dt_flat, scratch, dtg_flat, n_steps * W, True)
                    else:
                        dtg_flat[:] = _ONE
                    for k in range(n_steps):
                        dt_row = dt_t[k]
                        x_row = x_t[k]
                        dtx_row = dtx_t[k]
                        y_row = y_t[k]
                        for c in range(W):
                            dtx_row[c] = dt_row[c] * x_row[c]
                            y_row[c] = skip_loc[c] * x_row[c]
                    if has_z:  # out = y silu(z): dy := dLoss/dy = dout silu(z) needs no state
                        for k in range(n_steps):
                            z_row = z_t[k]
                            sig_row = sig_t[k]
                            for c in range(W):
                                sig_row[c] = z_row[c]
                        _sigmoid_inplace(sig_flat, n_steps * W)
                        for k in range(n_steps):
                            dy_row = dy_t[k]
                            z_row = z_t[k]
                            sig_row = sig_t[k]
                            dz_row = dz_t[k]
                            for c in range(W):
                                dz_row[c] = dy_row[c]  # dout, until y is known
                                dy_row[c] = dy_row[c] * z_row[c] * sig_row[c]
                    # Recompute the chunk's states (and, with a gate, its outputs before the gate); dC_t = <dy_t, h_t>
                    # sums across the block's channels.
                    for n in range(N):
                        s_row = states[0, n]
                        for c in range(w):
                            s_row[c] = checkpoints[b, ci, n, c0 + c]
                        for c in range(w, W):
                            s_row[c] = _ZERO
                    for k in range(n_steps):
                        t = t0 + k
                        dt_row = dt_t[k]
                        dtx_row = dtx_t[k]
                        dy_row = dy_t[k]
                        y_row = y_t[k]
                        B_row = Bm[b, g, t]
                        C_row = Cm[b, g, t]
                        dC_row = dC_part[b, g, part, t]
                        for n in range(N):
                            b_n = B_row[n]
                            c_n = C_row[n]
                            a_row = a_loc[n]
                            prev = states[k, n]
                            cur = states[k + 1, n]
                            dec_row = decay[k, n]
                            sum_C = _ZERO
                            if has_z:
                                for c in range(W):
                                    dec = _exp2f(dt_row[c] * a_row[c])
                                    dec_row[c] = dec
                                    h_n = dec * prev[c] + dtx_row[c] * b_n
                                    cur[c] = h_n
                                    y_row[c] += h_n * c_n
                                    sum_C += dy_row[c] * h_n
                            else:
                                for c in range(W):
                                    dec = _exp2f(dt_row[c] * a_row[c])
                                    dec_row[c] = dec
                                    h_n = dec * prev[c] + dtx_row[c] * b_n
                                    cur[c] = h_n
                                    sum_C += dy_row[c] * h_n
                            dC_row[n] += sum_C
                    if has_z:  # dz = dout y sigmoid(z) (1 + z (1 - sigmoid(z)))
                        for k in range(n_steps):
                            y_row = y_t[k]
                            z_row = z_t[k]
                            sig_row = sig_t[k]
                            dz_row = dz_t[k]
                            for c in range(W):
                                zt = z_row[c]
                                sig = sig_row[c]
                                dz_row[c] = dz_row[c] * y_row[c] * sig * (_ONE + zt * (_ONE - sig))
                    # Reverse sweep; adjoint holds dLoss/dh_t coming from step t + 1.
                    for k in range(n_steps - 1, -1, -1):
                        t = t0 + k
                        dt_row = dt_t[k]
                        dtx_row = dtx_t[k]
                        dy_row = dy_t[k]
                        B_row = Bm[b, g, t]
                        C_row = Cm[b, g, t]
                        dB_row = dB_part[b, g, part, t]
                        for c in range(W):
                            adj_B[c] = _ZERO
                            a_adh[c] = _ZERO
                        for n in range(N):
                            b_n = B_row[n]
                            c_n = C_row[n]
                            adj_row = adjoint[n]
                            prev = states[k, n]
                            dec_row = decay[k, n]
                            a_row = a_raw[n]
                            dA_row = dA_acc[n]
                            sum_B = _ZERO
                            for c in range(W):
                                adj = adj_row[c] + dy_row[c] * c_n  # dLoss/dh_t, all paths
                                sum_B += adj * dtx_row[c]
                                adj_B[c] += adj * b_n
                                adj_decay = adj * dec_row[c]  # dLoss/dh_{t-1} through the decay
                                through_decay = adj_decay * prev[c]
                                a_adh[c] += a_row[c] * through_decay
                                dA_row[c] += dt_row[c] * through_decay
                                adj_row[c] = adj_decay
                            dB_row[n] += sum_B
                        x_row = x_t[k]
                        dtg_row = dtg_t[k]
                        du_row = du_t[k]
                        dd_row = dd_t[k]
                        for c in range(W):
                            du_row[c] = dy_row[c] * skip_loc[c] + dt_row[c] * adj_B[c]
                            ddelta_c = (a_adh[c] + x_row[c] * adj_B[c]) * dtg_row[c]
                            dd_row[c] = ddelta_c
                            dbias_acc[c] += ddelta_c
                            dD_acc[c] += dy_row[c] * x_row[c]
                    for c in range(w):
                        du_ch = du[b, c0 + c, t0:t0 + n_steps]
                        dd_ch = ddelta[b, c0 + c, t0:t0 + n_steps]
                        for k in range(n_steps):
                            du_ch[k] = du_t[k, c]
                            dd_ch[k] = dd_t[k, c]
                        if has_z:
                            dz_ch = dz[b, c0 + c, t0:t0 + n_steps]
                            for k in range(n_steps):
                                dz_ch[k] = dz_t[k, c]
                for c in range(w):
                    for n in range(N):
                        dA_lane[b, c0 + c, n] = dA_acc[n, c]
                    dD_lane[b, c0 + c] = dD_acc[c]
                    dbias_lane[b, c0 + c] = dbias_acc[c]


    # Inference kernels (no autograd): time-major (batch, L, dim) data, vectorised across channels.
    # Compiled with FMA contraction only (no reassociation): the exp below is inlined, and its
    # Cody-Waite reduction must not be reassociated; nothing here reduces along the vector lanes.
    _INFER_MATH = {"contract"}

    @njit(parallel=True, cache=True, fastmath=_INFER_MATH, error_model="numpy")
    def _scan_inference_kernel(u, delta, A_t, Bm, Cm, D, z, z_off, delta_bias, has_D, has_z,
                               has_bias, softplus, index, use_index, channel_major, accumulate,
                               block, tile, out, last_state, init_state, has_init):
        """Forward-only scan, vectorised across channels, no checkpoints.

        Time-major (``channel_major`` False): u, delta, out: (batch, L, dim); z: (batch, L, >=
        z_off + dim), the gate being its columns z_off .. z_off + dim. Channel-major (True): u,
        delta, out: (batch, dim, L); z: (batch, >= z_off + dim, L). Any strides. A_t: (N, dim)
        (A transposed); Bm, Cm: (batch, G, L, N); D, delta_bias: (dim,); last_state:
        (batch, dim, N); init_state (read when ``has_init``): (batch, dim, N), the state before the
        first step (a previous chunk's last_state). Step p of the recurrence reads (and writes) time ``index[b, p]`` when
        ``use_index`` (a permutation of 0..L-1 per row, e.g. a reversal), else time p. With
        ``accumulate`` the result is added to ``out``.

        Each task owns ``block`` channels of one (batch, group) and keeps their (N, block) state
        in a small buffer. Steps are processed ``tile`` at a time: the tile's inputs are gathered
        into local (tile, block) buffers (transposing channel-major data), the time steps and
        gates for the whole tile are computed in one vectorised pass, then each step updates the
        state with the channels as the vector lanes (no horizontal sums).
        """
        batch = u.shape[0]
        dim = A_t.shape[1]
        L = u.shape[2] if channel_major else u.shape[1]
        N = A_t.shape[0]
        groups = Bm.shape[1]
        cpg = dim // groups
        bpg = (cpg + block - 1) // block
        for task in prange(batch * groups * bpg):
            b = task // (groups * bpg)
            g = (task // bpg) % groups
            c0 = g * cpg + (task % bpg) * block
            w = min(block, (g + 1) * cpg - c0)
            c1 = c0 + w
            # 2-D buffers read through row views indexed by the loop counter only: numba then
            # needs no negative-index wraparound, and LLVM emits plain vector loads/stores.
            h = np.zeros((N, w), dtype=np.float32)
            if has_init:
                for n in range(N):
                    h_row = h[n]
                    for c in range(w):
                        h_row[c] = init_state[b, c0 + c, n]
            a_loc = np.empty((N, w), dtype=np.float32)
            bias_loc = np.zeros(w, dtype=np.float32)
            skip_loc = np.zeros(w, dtype=np.float32)
            dt_t = np.empty((tile, w), dtype=np.float32)
            dtx_t = np.empty((tile, w), dtype=np.float32)
            y_t = np.empty((tile, w), dtype=np.float32)
            gate_t = np.empty((tile, w), dtype=np.float32)
            times = np.empty(tile, dtype=np.int64)
            for n in range(N):  # A * log2(e): the decays are 2 ** (dt * a_loc)
                a_row = a_loc[n]
                for c in range(w):
                    a_row[c] = A_t[n, c0 + c] * _LOG2E
            if has_bias:
                bias_loc[:] = delta_bias[c0:c1]
            if has_D:
                skip_loc[:] = D[c0:c1]
            for p0 in range(0, L, tile):
                n_steps = min(tile, L - p0)
                for k in range(n_steps):
                    times[k] = index[b, p0 + k] if use_index else p0 + k
                # Gather the tile: dt_t <- delta, dtx_t <- u, gate_t <- z.
                if channel_major:
                    for c in range(w):
                        delta_ch = delta[b, c0 + c]
                        u_ch = u[b, c0 + c]
                        for k in range(n_steps):
                            dt_t[k, c] = delta_ch[times[k]]
                            dtx_t[k, c] = u_ch[times[k]]
                        if has_z:
                            z_ch = z[b, z_off + c0 + c]
                            for k in range(n_steps):
                                gate_t[k, c] = z_ch[times[k]]
                else:
                    for k in range(n_steps):
                        t = times[k]
                        dt_t[k, :] = delta[b, t, c0:c1]
                        dtx_t[k, :] = u[b, t, c0:c1]
                        if has_z:
                            gate_t[k, :] = z[b, t, z_off + c0:z_off + c1]
                for k in range(n_steps):
                    dt_row = dt_t[k]
                    dtx_row = dtx_t[k]
                    y_row = y_t[k]
                    for c in range(w):
                        dt = dt_row[c] + bias_loc[c]
                        if softplus:
                            dt = _softplus1(dt)
                        x = dtx_row[c]
                        dt_row[c] = dt
                        dtx_row[c] = dt * x
                        y_row[c] = skip_loc[c] * x
                    if has_z:
                        gate_row = gate_t[k]
                        for c in range(w):
                            gate_row[c] = _silu1(gate_row[c])
                # The recurrence.
                for k in range(n_steps):
                    t = times[k]
                    dt_row = dt_t[k]
                    dtx_row = dtx_t[k]
                    y_row = y_t[k]
                    B_row = Bm[b, g, t]
                    C_row = Cm[b, g, t]
                    for n in range(N):
                        b_n = B_row[n]
                        c_n = C_row[n]
                        h_row = h[n]
                        a_row = a_loc[n]
                        for c in range(w):
                            h_n = _exp2f(dt_row[c] * a_row[c]) * h_row[c] + dtx_row[c] * b_n
                            h_row[c] = h_n
                            y_row[c] += h_n * c_n
                    if has_z:
                        gate_row = gate_t[k]
                        for c in range(w):
                            y_row[c] = y_row[c] * gate_row[c]
                # Scatter the tile's outputs.
                if channel_major:
                    for c in range(w):
                        out_ch = out[b, c0 + c]
                        if accumulate:
                            for k in range(n_steps):
                                out_ch[times[k]] += y_t[k, c]
                        else:
                            for k in range(n_steps):
                                out_ch[times[k]] = y_t[k, c]
                else:
                    for k in range(n_steps):
                        out_row = out[b, times[k], c0:c1]
                        y_row = y_t[k]
                        if accumulate:
                            for c in range(w):
                                out_row[c] += y_row[c]
                        else:
                            for c in range(w):
                                out_row[c] = y_row[c]
            for n in range(N):
                last_state[b, c0:c1, n] = h[n]

    @njit(parallel=True, cache=True, fastmath=_INFER_MATH, error_model="numpy")
    def _conv_inference_kernel(x, x_off, weight_t, bias, has_bias, silu, index, use_index,
                               t_block, out):
        """Causal depthwise convolution (+ SiLU) over time-major data, forward only.

        x: (batch, L, >= x_off + dim), the input is its columns x_off .. x_off + dim (e.g. a slice
        of a projection's output); out: (batch, L, dim); weight_t: (width, dim) (the filters
        transposed); bias: (dim,). Position p of the (possibly permuted) sequence reads positions
        p - width + 1 .. p, each at time ``index[b, q]`` when ``use_index``, and writes time
        ``index[b, p]``. Tasks are (batch, block of ``t_block`` positions); channels are the
        vector lanes.
        """
        batch, L, dim = out.shape
        width = weight_t.shape[0]
        n_tb = (L + t_block - 1) // t_block
        for task in prange(batch * n_tb):
            b = task // n_tb
            p0 = (task % n_tb) * t_block
            p1 = min(p0 + t_block, L)
            acc = np.empty(dim, dtype=np.float32)
            bias_loc = np.zeros(dim, dtype=np.float32)
            if has_bias:
                bias_loc[:] = bias
            for p in range(p0, p1):
                for c in range(dim):
                    acc[c] = bias_loc[c]
                for k in range(width):
                    q = p - width + 1 + k
                    if q >= 0:
                        tq = index[b, q] if use_index else q
                        x_row = x[b, tq, x_off:x_off + dim]
                        w_row = weight_t[k]
                        for c in range(dim):
                            acc[c] += w_row[c] * x_row[c]
                t = index[b, p] if use_index else p
                out_row = out[b, t]
                if silu:
                    for c in range(dim):
                        out_row[c] = _silu1(acc[c])
                else:
                    for c in range(dim):
                        out_row[c] = acc[c]

    @njit(cache=True, fastmath=_KERNEL_MATH)
    def _state_update_kernel(state, x, dt, A, Bm, Cm, D, z, dt_bias, has_D, has_z, has_bias,
                             softplus, out):
        """One recurrence step, state updated in place (the multi-head layout).

        state: (batch, H, P, N); x, dt, z, out: (batch, H, P); A: (H, P, N);
        Bm, Cm: (batch, G, N) with head h reading group h // (H / G); D, dt_bias: (H, P).
        The transcendental parts run over whole flat buffers with the vectorised helpers.
        """
        batch, heads, head_dim, N = state.shape
        heads_per_group = heads // Bm.shape[1]
        per_batch = heads * head_dim
        lanes = batch * per_batch
        block = 256  # lanes per pass: keeps the scratch buffers small and cache-resident
        steps = np.empty(block, dtype=np.float32)
        gate = np.empty(block, dtype=np.float32)
        scratch = np.empty(block * N, dtype=np.float32)  # softplus scratch, then the decays
        # Lanes are walked in (b, h, p) order with counters: integer division per lane would
        # cost more than the arithmetic.
        for start in range(0, lanes, block):
            count = min(block, lanes - start)
            b0 = start // per_batch
            h0 = (start % per_batch) // head_dim
            p0 = start % head_dim

            # the (batch, head, channel) lane walk is inlined in each pass on purpose: numba kernels, no helper calls per lane
            b, h, p = b0, h0, p0
            for i in range(count):
                steps[i] = dt[b, h, p] + (dt_bias[h, p] if has_bias else _ZERO)
                if has_z:
                    gate[i] = z[b, h, p]
                p += 1
                if p == head_dim:
                    p = 0
                    h += 1
                    if h == heads:
                        h = 0
                        b += 1
            if softplus:
                _softplus_inplace(steps, scratch, gate, count, False)
            if has_z:
                _sigmoid_inplace(gate, count)

            b, h, p = b0, h0, p0
            for i in range(count):
                for n in range(N):
                    scratch[i * N + n] = steps[i] * A[h, p, n]
                p += 1
                if p == head_dim:
                    p = 0
                    h += 1
                    if h == heads:
                        h = 0
            _exp_inplace(scratch, count * N)

            b, h, p = b0, h0, p0
            g = h // heads_per_group
            for i in range(count):
                xv = x[b, h, p]
                dt_x = steps[i] * xv
                y = _ZERO
                for n in range(N):
                    h_n = scratch[i * N + n] * state[b, h, p, n] + dt_x * Bm[b, g, n]
                    state[b, h, p, n] = h_n
                    y += h_n * Cm[b, g, n]
                if has_D:
                    y += D[h, p] * xv
                if has_z:
                    y = y * (gate[i] * z[b, h, p])  # y * silu(z)
                out[b, h, p] = y
                p += 1
                if p == head_dim:
                    p = 0
                    h += 1
                    if h == heads:
                        h = 0
                        b += 1
                    g = h // heads_per_group


# ----------------------------------------------------------------------------------------------
# torch glue
# ----------------------------------------------------------------------------------------------


def _set_threads() -> int:
    """Use as many numba threads as torch does (never more than numba was started with); returns torch's count.

    numba's OpenMP threading layer shares libgomp with torch and sets its thread count when it starts, which would
    silently raise torch's intra-op threads (e.g. from the 1 that torchrun gives each process to NUMBA_NUM_THREADS):
    call `_restore_torch_threads` with the returned count after each kernel."""
    torch_threads = torch.get_num_threads()
    wanted = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    return torch_threads


def _restore_torch_threads(torch_threads: int) -> None:
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


def _f32_view(t: torch.Tensor) -> np.ndarray:
    """A float32 numpy view of ``t`` with its strides (a copy only for other dtypes).

    Parameters (leaves that require grad: A, D, the time-step bias: small) are copied, never viewed: ``Tensor.numpy()``
    marks a storage non-resizable for good, and FSDP2 frees and re-gathers parameters by resizing their storage."""
    if t.dtype != torch.float32:
        t = t.detach().to(torch.float32)
    elif t.is_leaf and t.requires_grad:
        return t.detach().clone().numpy()
    return t.detach().numpy()


def _f32_numpy(t: Optional[torch.Tensor]) -> np.ndarray:
    """A float32 C-contiguous numpy array of ``t`` (a view when ``t`` already is one; parameters: see `_f32_view`)."""
    if t.dtype == torch.float32 and t.is_contiguous():
        return _f32_view(t)
    return t.detach().to(torch.float32).contiguous().numpy()


_EMPTY1 = np.zeros(0, dtype=np.float32)
_EMPTY2 = np.zeros((0, 0), dtype=np.float32)
_EMPTY3 = np.zeros((0, 0, 0), dtype=np.float32)


def _time_major_groups(M: torch.Tensor) -> np.ndarray:
    """(batch, N, L) or (batch, G, N, L) -> contiguous float32 numpy (batch, G, L, N)."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.detach().to(torch.float32).transpose(2, 3).contiguous().numpy()


def _n_parts(batch: int, groups: int, channels_per_group: int) -> int:
    """Parts per (batch, group) in the backward (each a run of TRAIN_BLOCK-channel blocks with its own dB / dC
    partial sums), so that it has ~4 tasks per thread."""
    tasks_wanted = 4 * numba.get_num_threads()
    per_pair = -(-tasks_wanted // (batch * groups))
    blocks = -(-channels_per_group // TRAIN_BLOCK)
    return max(1, min(blocks, per_pair))


# Most channels per task of the inference scan ((N, block) float32 state: 24 KiB at N = 16).
INFERENCE_MAX_BLOCK = 384
# Time steps per tile of the inference scan.
INFERENCE_TILE = 16
_NO_INDEX = np.zeros((1, 1), dtype=np.int64)


def _rows_and_offset(t: torch.Tensor):
    """``(array, offset)`` with ``t == array[:, :, offset:offset + t.shape[2]]`` for a 3-D tensor and ``array`` C-contiguous
    float32 where possible: a column slice of a contiguous ``(batch, L, width)`` tensor (x or z of the input
    projection's output) is read through its whole rows, so numba sees contiguous rows, not an arbitrary stride."""
    if t.dtype == torch.float32 and t.dim() == 3 and t.stride(2) == 1 and t.shape[1] > 0:
        row = t.stride(1)
        offset = t.storage_offset() % row if row > 0 else 0
        if row >= offset + t.shape[2] and t.stride(0) == t.shape[1] * row:
            try:
                base = torch.as_strided(t.detach(), (t.shape[0], t.shape[1], row), (t.stride(0), row, 1),
                                        t.storage_offset() - offset)
            except RuntimeError:  # the whole rows would reach outside the storage
                base = None
            if base is not None:
                return base.numpy(), offset
    return _f32_view(t), 0


def _inference_block(batch: int, groups: int, channels_per_group: int) -> int:
    """Channels per task of the inference scan: one task per thread where that fits (a multiple of 16 channels, the
    float32 lanes of a 512-bit vector, at most INFERENCE_MAX_BLOCK)."""
    threads = numba.get_num_threads()
    per_pair = max(1, -(-threads // (batch * groups)))
    block = -(-channels_per_group // per_pair)
    block = -(-block // 16) * 16
    return max(1, min(block, INFERENCE_MAX_BLOCK, channels_per_group))


def _index_np(index: Optional[torch.Tensor]):
    if index is None:
        return _NO_INDEX, False
    return index.detach().to(torch.int64).contiguous().numpy(), True


def selective_scan_inference_time_major(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                        delta_softplus=False, index=None, out=None,
                                        accumulate=False, return_last_state=False, initial_state=None,
                                        block: Optional[int] = None, channel_major: bool = False,
                                        tile: int = INFERENCE_TILE):
    """Forward-only fused scan (no autograd graph is recorded), on time-major tensors.

    u, delta, z: ``(batch, L, dim)``, any strides (e.g. column slices of a projection);
    A: ``(dim, N)``; B, C: ``(batch, L, N)`` or grouped ``(batch, L, G, N)``, any strides;
    D, delta_bias: ``(dim,)``. With ``channel_major=True`` u, delta, z (and ``out``) are
    ``(batch, dim, L)`` and B, C ``(batch, N, L)`` / ``(batch, G, N, L)`` instead (the layout of
    :func:`selective_scan_cpu`; the kernel transposes tiles of them on the fly).
    ``index``: optional ``(batch, L)`` permutation of the time steps per row; step p of the
    recurrence then reads and writes time ``index[b, p]`` (a reversal index runs the scan
    backwards in time without flipping anything). ``out``: optional float32 buffer (any strides)
    written, or added to when ``accumulate``. ``initial_state``: optional ``(batch, dim, N)`` state
    before the first step (the ``last_state`` of the chunk before: a long sequence scanned chunk by
    chunk equals one scan). ``block``: channels per task (default: as many as
    keep every thread busy, at most ``INFERENCE_MAX_BLOCK``); ``tile``: time steps per tile.
    Returns ``out`` (float32) or ``(out, last_state)``.
    """
    if numba is None:
        raise RuntimeError("the CPU scan kernel needs numba: `pip install numba`.")
    if channel_major:
        batch, dim, length = u.shape
        if B.dim() == 3:
            B, C = B.unsqueeze(1), C.unsqueeze(1)
        B_np = _f32_view(B).transpose(0, 1, 3, 2)  # (batch, G, L, N) view
        C_np = _f32_view(C).transpose(0, 1, 3, 2)
        out_shape = (batch, dim, length)
    else:
        batch, length, dim = u.shape
        if B.dim() == 3:
            B, C = B.unsqueeze(2), C.unsqueeze(2)
        B_np = _f32_view(B).transpose(0, 2, 1, 3)  # (batch, G, L, N) view
        C_np = _f32_view(C).transpose(0, 2, 1, 3)
        out_shape = (batch, length, dim)
    n_state = A.shape[1]
    if out is None:
        out = torch.empty(out_shape, dtype=torch.float32)
        accumulate = False
    index_np, use_index = _index_np(index)
    last_state = np.empty((batch, dim, n_state), dtype=np.float32)
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, n_state):
        raise ValueError(f"initial_state must be (batch, dim, N) = {(batch, dim, n_state)}, got "
                         f"{tuple(initial_state.shape)}.")
    if z is None:
        z_np, z_off = _EMPTY3, 0
    elif channel_major:
        z_np, z_off = _f32_view(z), 0
    else:
        z_np, z_off = _rows_and_offset(z)
    torch_threads = _set_threads()
    if block is None:
        block = _inference_block(batch, B_np.shape[1], dim // B_np.shape[1])
    _scan_inference_kernel(
        _f32_view(u), _f32_view(delta), np.ascontiguousarray(_f32_numpy(A).T), B_np, C_np,
        _f32_numpy(D) if D is not None else _EMPTY1, z_np, z_off,
        _f32_numpy(delta_bias) if delta_bias is not None else _EMPTY1,
        D is not None, z is not None, delta_bias is not None, bool(delta_softplus),
        index_np, use_index, bool(channel_major), bool(accumulate), int(block), int(tile),
        out.detach().numpy(), last_state,
        _EMPTY3 if initial_state is None else _f32_numpy(initial_state), initial_state is not None)
    _restore_torch_threads(torch_threads)
    return (out, torch.from_numpy(last_state)) if return_last_state else out


def causal_conv1d_inference_time_major(x, weight, bias=None, silu=True, index=None,
                                       t_block: int = 256, out=None):
    """Forward-only causal depthwise convolution (+ SiLU) on time-major ``x`` ``(batch, L, dim)``
    (any strides); weight ``(dim, width)``, bias ``(dim,)``. With ``index`` (a ``(batch, L)``
    permutation of time steps per row) the convolution runs along the permuted sequence and each
    output lands at its original time, e.g. the anti-causal convolution of a reversal.
    ``out``: optional contiguous float32 ``(batch, L, dim)`` buffer to write (must not overlap ``x``).
    Returns the float32 ``(batch, L, dim)`` result (``out`` when given)."""
    if numba is None:
        raise RuntimeError("the CPU conv kernel needs numba: `pip install numba`.")
    batch, length, dim = x.shape
    if out is None:
        out = torch.empty(batch, length, dim, dtype=torch.float32)
    elif out.shape != (batch, length, dim) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {(batch, length, dim)}, got "
                         f"{out.dtype} {tuple(out.shape)}.")
    index_np, use_index = _index_np(index)
    torch_threads = _set_threads()
    x_np, x_off = _rows_and_offset(x)
    _conv_inference_kernel(x_np, x_off, np.ascontiguousarray(_f32_numpy(weight).T),
                           _f32_numpy(bias) if bias is not None else _EMPTY1, bias is not None,
                           bool(silu), index_np, use_index, int(t_block), out.numpy())
    _restore_torch_threads(torch_threads)
    return out


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
        torch_threads = _set_threads()
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        batch, dim, length = u.shape
        n_state = A.shape[1]
        n_chunks = -(-length // chunk)
        u_np, delta_np = _f32_numpy(u), _f32_numpy(delta)
        A_np = np.ascontiguousarray(_f32_numpy(A).T)  # (N, dim): rows run along the channels
        B_np, C_np = _time_major_groups(B), _time_major_groups(C)
        D_np = _f32_numpy(D) if D is not None else _EMPTY1
        z_np = _f32_numpy(z) if z is not None else _EMPTY3
        bias_np = _f32_numpy(delta_bias) if delta_bias is not None else _EMPTY1

        out = np.empty((batch, dim, length), dtype=np.float32)
        last_state = np.empty((batch, dim, n_state), dtype=np.float32)
        checkpoints = np.empty((batch, n_chunks, n_state, dim), dtype=np.float32)
        _scan_forward_kernel(u_np, delta_np, A_np, B_np, C_np, D_np, z_np, bias_np,
                             D is not None, z is not None, delta_bias is not None,
                             bool(delta_softplus), chunk, out, last_state, checkpoints)
        _restore_torch_threads(torch_threads)

        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.numpy_inputs = (u_np, delta_np, A_np, B_np, C_np, D_np, z_np, bias_np)
        ctx.checkpoints = checkpoints
        ctx.delta_softplus = bool(delta_softplus)
        ctx.chunk = chunk
        out_t = torch.from_numpy(out).to(u.dtype)
        last_t = torch.from_numpy(last_state)
        return out_t, last_t

    @staticmethod
    def backward(ctx, dout, dlast):
        torch_threads = _set_threads()
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        u_np, delta_np, A_np, B_np, C_np, D_np, z_np, bias_np = ctx.numpy_inputs
        batch, dim, length = u.shape
        n_state = A.shape[1]
        groups = B_np.shape[1]
        n_parts = _n_parts(batch, groups, dim // groups)

        dout_np = _f32_numpy(dout) if dout is not None else np.zeros((batch, dim, length),
                                                                       dtype=np.float32)
        has_dlast = dlast is not None
        dlast_np = _f32_numpy(dlast) if has_dlast else _EMPTY3

        du = np.empty((batch, dim, length), dtype=np.float32)
        ddelta = np.empty((batch, dim, length), dtype=np.float32)
        dz = np.empty((batch, dim, length), dtype=np.float32) if z is not None else _EMPTY3
        dA_lane = np.empty((batch, dim, n_state), dtype=np.float32)
        dD_lane = np.empty((batch, dim), dtype=np.float32)
        dbias_lane = np.empty((batch, dim), dtype=np.float32)
        dB_part = np.zeros((batch, groups, n_parts, length, n_state), dtype=np.float32)
        dC_part = np.zeros((batch, groups, n_parts, length, n_state), dtype=np.float32)
        _scan_backward_kernel(u_np, delta_np, A_np, B_np, C_np, D_np, z_np, bias_np,
                              D is not None, z is not None, delta_bias is not None,
                              ctx.delta_softplus, ctx.chunk, ctx.checkpoints, dout_np, dlast_np,
                              has_dlast, n_parts, du, ddelta, dz, dA_lane, dD_lane, dbias_lane,
                              dB_part, dC_part)
        _restore_torch_threads(torch_threads)

        def grouped_grad(part: np.ndarray, like: torch.Tensor) -> torch.Tensor:
            grad = torch.from_numpy(part).sum(dim=2).transpose(2, 3)  # (batch, G, N, L)
            if like.dim() == 3:
                grad = grad.squeeze(1)
            return grad.to(like.dtype)

        grads = [
            torch.from_numpy(du).to(u.dtype),
            torch.from_numpy(ddelta).to(delta.dtype),
            torch.from_numpy(dA_lane).sum(0).to(A.dtype),
            grouped_grad(dB_part, B),
            grouped_grad(dC_part, C),
            torch.from_numpy(dD_lane).sum(0).to(D.dtype) if D is not None else None,
            torch.from_numpy(dz).to(z.dtype) if z is not None else None,
            torch.from_numpy(dbias_lane).sum(0).to(delta_bias.dtype)
            if delta_bias is not None else None,
        ]
        needs = ctx.needs_input_grad
        return tuple(g if (i < len(needs) and needs[i]) else None for i, g in enumerate(grads)) + (
            None, None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, chunk: int = DEFAULT_CHUNK):
    """The fused CPU scan; same arguments and results as ``selective_scan.selective_scan_fn``.

    Inputs are validated by the caller. ``chunk`` is the checkpoint interval of the backward pass.
    When no gradient can be needed (grad mode off, or no input requires grad) the forward-only
    kernel runs instead: no state checkpoints, vectorised across channels.
    """
    if numba is None:
        raise RuntimeError("the CPU scan kernel needs numba: `pip install numba`.")
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if INFERENCE_KERNELS and not (torch.is_grad_enabled()
                                  and any(t is not None and t.requires_grad for t in tensors)):
        # Nothing to differentiate: the forward-only kernel (no checkpoints, channel-vectorised).
        out, last_state = selective_scan_inference_time_major(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
            return_last_state=True, channel_major=True, tile=8)
        out = out.to(u.dtype)
        return (out, last_state) if return_last_state else out
    out, last_state = _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias,
                                              delta_softplus, int(chunk))
    return (out, last_state) if return_last_state else out


def selective_state_update_cpu(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
    """One decoding step on CPU; see ``selective_scan.selective_state_update`` (validated there).

    ``state`` is updated in place. When autograd would need to track the step (an input requires
    grad and grad mode is on) this defers to the differentiable PyTorch reference.
    """
    from .selective_scan import as_head_layout, selective_state_update_reference

    tensors = (state, x, dt, A, B, C, D, z, dt_bias)
    if numba is None or (torch.is_grad_enabled()
                         and any(t is not None and t.requires_grad for t in tensors)):
        return selective_state_update_reference(state, x, dt, A, B, C, D=D, z=z,
                                                dt_bias=dt_bias, dt_softplus=dt_softplus)
    out_shape, out_dtype = x.shape, x.dtype
    state_4d, x, dt, A, D, z, dt_bias = as_head_layout(state, x, dt, A, D, z, dt_bias)
    if B.dim() == 2:
        B = B.unsqueeze(1)
    if C.dim() == 2:
        C = C.unsqueeze(1)
    # Work on float32 contiguous memory; write back only if that had to be a copy.
    direct = state_4d.dtype == torch.float32 and state_4d.is_contiguous()
    state_work = state_4d if direct else state_4d.detach().to(torch.float32).contiguous()
    state_np = state_work.detach().numpy()
    out = np.empty(tuple(x.shape), dtype=np.float32)
    torch_threads = _set_threads()
    _state_update_kernel(state_np, _f32_numpy(x), _f32_numpy(dt), _f32_numpy(A),
                         _f32_numpy(B), _f32_numpy(C),
                         _f32_numpy(D) if D is not None else _EMPTY2,
                         _f32_numpy(z) if z is not None else _EMPTY3,
                         _f32_numpy(dt_bias) if dt_bias is not None else _EMPTY2,
                         D is not None, z is not None, dt_bias is not None, bool(dt_softplus), out)
    _restore_torch_threads(torch_threads)
    if not direct:
        state_4d.copy_(state_work)
    return torch.from_numpy(out).to(out_dtype).reshape(out_shape)
