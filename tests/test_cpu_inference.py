"""The fused no-grad CPU paths of `cpu_inference.py` that models call directly: paired blocks (Vim's layer pairing, as
SSAMBA's layers 2i and 2i+1) computed at once equal the same blocks run one by one and the autograd path."""

import pytest
import torch

from mamba_zoo import SSAMBAConfig, SSAMBAModel, cpu_inference
from mamba_zoo.kernel_backends import cpu_kernels
from zoo_cases import randomize

pytestmark = pytest.mark.skipif(cpu_kernels() is None, reason="the fused CPU kernels need numba")


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def random_ssamba(seed, **kwargs):
    config = dict(hidden_size=32, num_hidden_layers=4, num_mel_bins=32, max_length=80, patch_size=16,
                  frequency_stride=16, time_stride=16, drop_path_rate=0.0)
    return randomize(SSAMBAModel(SSAMBAConfig(**{**config, **kwargs})).eval(), seed)


@pytest.fixture
def paired_calls(monkeypatch):
    calls = []
    original = cpu_inference.paired_blocks_cpu_forward

    def counting(blocks, reverses, hidden_states, *args):
        calls.append((len(blocks), tuple(reverses), tuple(hidden_states.shape)))
        return original(blocks, reverses, hidden_states, *args)

    monkeypatch.setattr(cpu_inference, "paired_blocks_cpu_forward", counting)
    import mamba_zoo.modeling_ssamba as modeling

    monkeypatch.setattr(modeling, "paired_blocks_cpu_forward", counting)
    return calls


@pytest.mark.parametrize("kwargs", [{}, {"divide_out": False, "use_bias": True},
                                    {"use_conv_bias": False, "bidirectional_mixer": False}])
@pytest.mark.parametrize("frames", [80, 61])  # 5 x 2 patches + cls; an odd number of frames (3 columns)
def test_paired_blocks_equal_block_by_block_and_autograd(monkeypatch, paired_calls, kwargs, frames):
    """Both layers of each pair (forward and reversed reading, both directions of each mixer) computed at once equal
    the layers run one by one on the per-mixer fused path and the autograd path, with and without a padding mask that
    leaves each row a different length."""
    seed = frames + len(kwargs)
    model = random_ssamba(seed, **kwargs)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, frames, 32, generator=g)
    mask = torch.ones(3, frames, dtype=torch.long)
    mask[1, 40:] = 0  # 2 columns of 2 frequency patches
    mask[2, 20:] = 0  # 1 column
    for extra in ({}, {"attention_mask": mask}):
        paired_calls.clear()
        with torch.inference_mode():
            paired = model(x, **extra).last_hidden_state
        length = 1 + 2 * ((frames - 16) // 16 + 1)
        assert paired_calls == [(2, (False, True), (3, length, 32))] * 2
        monkeypatch.setattr(cpu_inference, "PAIRED_BLOCKS", False)
        with torch.no_grad():
            one_by_one = model(x, **extra).last_hidden_state
        monkeypatch.setattr(cpu_inference, "PAIRED_BLOCKS", True)
        autograd = model(x, **extra).last_hidden_state.detach()
        assert len(paired_calls) == 2  # neither of those took the paired path
        assert rel_err(paired, one_by_one) < 1e-5, extra
        assert rel_err(paired, autograd) < 1e-5, extra
        if extra:  # zeros at the padded patches; a padded row equals the row alone
            token_mask = model.token_mask(mask, (2, (length - 1) // 2)).bool()
            assert (paired[~token_mask] == 0).all() and paired[token_mask].abs().min() > 0
            with torch.no_grad():
                alone = model(x[2:3, :20]).last_hidden_state
            assert rel_err(paired[2][token_mask[2]], alone[0]) < 1e-5


def test_paired_blocks_see_reversal_and_both_layers(paired_calls):
    """The second layer of a pair reads the sequence reversed and each layer counts: swapping a pair's layers, or
    zeroing one layer's out_proj, changes the paired path's output exactly as it changes the autograd path's."""
    model = random_ssamba(3)
    x = torch.randn(2, 80, 32)
    with torch.no_grad():
        base = model(x).last_hidden_state
        model.layers[0], model.layers[1] = model.layers[1], model.layers[0]
        swapped = model(x).last_hidden_state
        model.layers[0].mixer.out_proj.weight.zero_()  # changed in place: the stacked parameters are rebuilt
        zeroed = model(x).last_hidden_state
    assert rel_err(swapped, base) > 1e-3 and rel_err(zeroed, swapped) > 1e-3
    assert rel_err(zeroed, model(x).last_hidden_state.detach()) < 1e-5
    assert len(paired_calls) == 6


def test_paired_blocks_run_long_batches_in_row_chunks(monkeypatch, paired_calls):
    model = random_ssamba(4)
    x = torch.randn(5, 80, 32)
    mask = (torch.arange(80)[None, :] < torch.tensor([80, 33, 80, 16, 64])[:, None]).long()
    for extra in ({}, {"attention_mask": mask}):
        with torch.no_grad():
            whole = model(x, **extra).last_hidden_state
            monkeypatch.setattr(cpu_inference, "PAIRED_CHUNK_TOKENS", 22)  # 2 rows of 11 tokens
            rows = []
            original = cpu_inference._paired_rows
            monkeypatch.setattr(cpu_inference, "_paired_rows", lambda b, p, h, *a: rows.append(h.shape[0])
                                or original(b, p, h, *a))
            chunked = model(x, **extra).last_hidden_state
            monkeypatch.undo()
        assert rows == [2, 2, 1] * 2
        assert rel_err(chunked, whole) < 1e-6, extra


def test_paired_path_only_where_it_applies(paired_calls):
    """Hidden states of every layer, gradients, hooks or a longer sequence than PAIRED_CHUNK_TOKENS: block by block."""
    model = random_ssamba(5)
    x = torch.randn(2, 80, 32)
    with torch.no_grad():
        model(x, output_hidden_states=True)
    model(x)  # parameters require grad
    model.layers[3].mixer.x_proj_b.register_forward_hook(lambda *args: None)
    with torch.no_grad():
        model(x)
    assert paired_calls == []
    model.layers[3].mixer.x_proj_b._forward_hooks.clear()
    with torch.no_grad():
        model(x)
    assert len(paired_calls) == 2


@pytest.fixture
def chunked_calls(monkeypatch):
    calls = []
    original = cpu_inference.blocks_time_chunked_forward

    def counting(blocks, reverses, hidden_states, *args, **kwargs):
        calls.append((len(blocks), tuple(reverses), tuple(hidden_states.shape)))
        return original(blocks, reverses, hidden_states, *args, **kwargs)

    import mamba_zoo.modeling_ssamba as modeling

    monkeypatch.setattr(modeling, "blocks_time_chunked_forward", counting)
    return calls


@pytest.mark.parametrize("kwargs", [{}, {"bidirectional_layer_pairing": False},
                                    {"divide_out": False, "use_bias": True, "use_cls_token": False},
                                    {"use_conv_bias": False, "bidirectional_mixer": False},
                                    {"bidirectional_layer_pairing": False, "bidirectional_mixer": False}])
@pytest.mark.parametrize("batch", [1, 2])
def test_time_chunked_blocks_equal_one_pass(monkeypatch, chunked_calls, kwargs, batch):
    """A sequence longer than PAIRED_CHUNK_TOKENS runs each layer (or pair) in time chunks, every branch carrying its
    scan state and conv window across chunk boundaries in its own walking direction: equal to the block-by-block
    fused path and the autograd path. 416 frames: 26 columns of 2 patches (+ cls), chunks of 13 steps, the last of one
    step (the cls-free model: an even split)."""
    model = random_ssamba(7 + batch + len(kwargs), max_length=416, **kwargs)
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 416, 32, generator=g)
    length = 52 + model.embeddings.num_prefix_tokens
    with monkeypatch.context() as patch:
        patch.setattr(cpu_inference, "PAIRED_CHUNK_TOKENS", 40)
        patch.setattr(cpu_inference, "INFERENCE_TIME_CHUNK", 40)
        patch.setattr(cpu_inference, "TIME_CHUNK_TOKENS", 13 * batch)
        with torch.no_grad():
            chunked = model(x).last_hidden_state
    group = 2 if model.config.bidirectional_layer_pairing else 1
    assert chunked_calls == [(group, (False, True)[:group], (batch, length, 32))] * (4 // group)
    monkeypatch.setattr(cpu_inference, "PAIRED_BLOCKS", False)  # each mixer in one pass
    with torch.no_grad():
        one_by_one = model(x).last_hidden_state
    autograd = model(x).last_hidden_state.detach()
    assert len(chunked_calls) == 4 // group  # neither of those was chunked
    assert rel_err(chunked, one_by_one) < 1e-5
    assert rel_err(chunked, autograd) < 1e-5


def test_in_place_final_norm_runs_in_chunks_unless_hooked(monkeypatch):
    """At inference the final norm is applied in place TIME_CHUNK_TOKENS tokens at a time (same output), but a hook
    on norm_f sees the whole sequence in one call, as without the in-place path."""
    model = random_ssamba(10, max_length=416)
    x = torch.randn(1, 416, 32)
    calls = []
    model.norm_f.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[1]))
    with torch.no_grad():
        whole = model(x, output_hidden_states=True).last_hidden_state  # the out-of-place path
        monkeypatch.setattr(cpu_inference, "TIME_CHUNK_TOKENS", 20)
        hooked = model(x).last_hidden_state
    assert calls == [53, 53] * 2  # double_final_norm: two calls, each over all 53 tokens
    model.norm_f._forward_pre_hooks.clear()
    chunks = []
    original = model.norm_f.forward
    monkeypatch.setattr(model.norm_f, "forward", lambda h: chunks.append(h.shape[1]) or original(h))
    with torch.no_grad():
        chunked = model(x).last_hidden_state
    assert chunks == [20, 20, 20, 20, 13, 13]
    assert torch.equal(chunked, hooked)  # a norm per token: chunking changes no bit
    assert rel_err(hooked, whole) < 1e-5  # (the hidden-states path runs the blocks one by one)


def test_time_chunked_blocks_only_where_they_apply(monkeypatch, chunked_calls):
    """Padding, hidden states of every layer or gradients keep the long sequence on the other paths."""
    model = random_ssamba(8, max_length=416)
    monkeypatch.setattr(cpu_inference, "PAIRED_CHUNK_TOKENS", 20)
    monkeypatch.setattr(cpu_inference, "INFERENCE_TIME_CHUNK", 20)
    x = torch.randn(2, 416, 32)
    mask = torch.ones(2, 416, dtype=torch.long)
    mask[1, 300:] = 0
    with torch.no_grad():
        padded = model(x, attention_mask=mask).last_hidden_state
        with_states = model(x, output_hidden_states=True)
    model(x)
    assert chunked_calls == []
    with torch.no_grad():
        chunked = model(x).last_hidden_state
    assert len(chunked_calls) == 2
    assert rel_err(chunked, with_states.last_hidden_state) < 1e-5
    assert rel_err(chunked[0], padded[0]) < 1e-5  # the unpadded row is the same on the padded batch's path


def test_time_chunked_forward_reuses_its_inputs():
    """Memory: the stream is updated in place and the output is written over the consumed hidden states, so a stack
    of chunked blocks holds two sequence-sized tensors; the first block (no stream) takes its stream from the hidden
    states."""
    model = random_ssamba(9)
    with torch.no_grad():
        hidden = torch.randn(1, 60, 32)
        first_out, stream = cpu_inference.blocks_time_chunked_forward(model.layers[0:2], (False, True), hidden, None,
                                                                      2.0, chunk_tokens=16)
        assert stream.data_ptr() == hidden.data_ptr() and first_out.data_ptr() != hidden.data_ptr()
        stream_before = stream.clone()
        hidden_before = first_out.clone()
        out, r = cpu_inference.blocks_time_chunked_forward(model.layers[2:4], (False, True), first_out, stream, 2.0,
                                                           chunk_tokens=16)
        assert out.data_ptr() == first_out.data_ptr() and r.data_ptr() == stream.data_ptr()
        assert torch.equal(r, hidden_before + 2.0 * stream_before)
