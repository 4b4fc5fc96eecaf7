"""SSAMBA models: config validation and round trip, save/load, batch equivalence with padding, gradient checkpointing,
hidden states, problem types, SSAST pretraining objectives, position-embedding resizing, pipeline, LoRA, remote code."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamba_zoo import (
    SSAMBAConfig,
    SSAMBAFeatureExtractor,
    SSAMBAForAudioClassification,
    SSAMBAForAudioFrameClassification,
    SSAMBAForPreTraining,
    SSAMBAModel,
)
from mamba_zoo.modeling_ssamba import cluster_mask_indices, resize_grid_embeddings
from zoo_cases import randomize


def tiny_config(**kwargs):
    defaults = dict(hidden_size=32, num_hidden_layers=4, num_mel_bins=32, max_length=48, patch_size=16,
                    frequency_stride=16, time_stride=16, drop_path_rate=0.0, num_labels=3, mask_patch_count=3)
    return SSAMBAConfig(**{**defaults, **kwargs})


# ---------------------------------------------------------------------------------------------- config


def test_config_round_trip_and_presets(tmp_path):
    config = tiny_config(id2label={0: "yes", 1: "no", 2: "up"}, label2id={"yes": 0, "no": 1, "up": 2})
    config.save_pretrained(tmp_path)
    loaded = SSAMBAConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.id2label == {0: "yes", 1: "no", 2: "up"} and loaded.time_step_rank == 2
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "ssamba"
    for size, width in (("tiny", 192), ("small", 384), ("base", 768)):
        preset = SSAMBAConfig.from_preset(size)
        assert (preset.hidden_size, preset.num_hidden_layers, preset.time_step_rank) == (width, 24, -(-width // 16))
    assert SSAMBAConfig().grid_size == (8, 64) and SSAMBAConfig().num_patches == 512
    assert SSAMBAConfig(frequency_stride=10, time_stride=10, max_length=128).grid_size == (12, 12)


def test_frame_patches_config_and_model(tmp_path):
    """SSAST's fshape/tshape: [frequency, time] patches, e.g. frame-based tokens spanning every mel bin."""
    config = tiny_config(patch_size=(32, 4), frequency_stride=32, time_stride=4)
    assert config.patch_size == [32, 4] and (config.frequency_patch_size, config.time_patch_size) == (32, 4)
    assert config.grid_size == (1, 12) and config.num_patches == 12
    config.save_pretrained(tmp_path)
    assert SSAMBAConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    assert tiny_config(patch_size=[16, 16]).patch_size == 16  # a square pair is the int
    model = SSAMBAForAudioClassification(config).eval()
    assert model.ssamba.embeddings.patch_embeddings.projection.weight.shape[-2:] == (32, 4)
    x = torch.randn(2, 48, 32)
    with torch.no_grad():
        out = model.ssamba(x)
        short = model.ssamba(x[:1], attention_mask=(torch.arange(48) < 30).long()[None])
        alone = model.ssamba(x[:1, :28], interpolate_pos_encoding=False)
    assert out.last_hidden_state.shape == (2, 13, 32)
    # 30 valid frames hold 7 whole 4-frame patches: the padded clip equals the clip cut to those 28 frames
    torch.testing.assert_close(short.pooler_output, alone.pooler_output, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_length=8), "max_length .* smaller than patch_size"),
        (dict(num_mel_bins=10), "num_mel_bins .* smaller than patch_size"),
        (dict(patch_size=[0, 4]), "patch_size must be a positive integer .* pair"),
        (dict(patch_size=[4, 4, 4]), "patch_size must be a positive integer .* pair"),
        (dict(patch_size=[64, 4], frequency_stride=64, time_stride=4), "num_mel_bins .* smaller than patch_size"),
        (dict(num_hidden_layers=3), "must be even"),
        (dict(pooling="max"), "pooling"),
        (dict(norm_type="batchnorm"), "norm_type"),
        (dict(time_stride=0), "time_stride must be a positive"),
        (dict(drop_path_rate=1.5), "drop_path_rate"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_pretraining_geometry_errors():
    with pytest.raises(ValueError, match="non-overlapping patches"):
        SSAMBAForPreTraining(tiny_config(time_stride=10))
    with pytest.raises(ValueError, match="mask_patch_count"):
        SSAMBAForPreTraining(tiny_config(mask_patch_count=6))


# ---------------------------------------------------------------------------------------------- model contracts


def test_save_load_identical_outputs_and_tuples(tmp_path):
    model = randomize(SSAMBAForAudioClassification(tiny_config())).eval()
    x = torch.randn(2, 48, 32)
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    from transformers import AutoModelForAudioClassification

    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is SSAMBAForAudioClassification
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, expected, rtol=0, atol=0)
        as_tuple = loaded(x, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], expected)


def test_batch_equivalence_fixed_length_and_with_padding_mask():
    model = randomize(SSAMBAForAudioClassification(tiny_config(max_length=64)), seed=1).eval()
    x = torch.randn(3, 64, 32)
    with torch.no_grad():
        batched = model(x).logits
        for i in range(3):
            torch.testing.assert_close(model(x[i:i + 1]).logits[0], batched[i], rtol=1e-5, atol=1e-5)
        # variable length: clip 1 has 40 valid frames, clip 2 has 20; padding must not leak into any output
        mask = torch.ones(3, 64, dtype=torch.long)
        mask[1, 40:] = 0
        mask[2, 20:] = 0
        padded = x.clone()
        padded[1, 40:] = 123.0  # garbage in the padding
        padded[2, 20:] = -7.0
        out = model(padded, attention_mask=mask, output_hidden_states=True)
        torch.testing.assert_close(out.logits[0], batched[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits[1], model(x[1:2, :40]).logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits[2], model(x[2:3, :20]).logits[0], rtol=1e-5, atol=1e-5)
        # padded patches are zero in the outputs; valid ones equal the clip run alone
        alone = model.ssamba(x[1:2, :40]).last_hidden_state[0]  # cls + 2 x 2 patches
        grid_tokens = out.hidden_states[-1][1, 1:].reshape(2, 4, 32)
        torch.testing.assert_close(grid_tokens[:, :2].reshape(-1, 32), alone[1:], rtol=1e-5, atol=1e-5)
        assert torch.all(grid_tokens[:, 2:] == 0)
    with pytest.raises(ValueError, match="right-padded"):
        model(x, attention_mask=torch.tensor([[0] * 10 + [1] * 54] * 3))


@pytest.mark.parametrize("patch", ["16x16", "frames"])
def test_frame_classification_logits_per_time_column(patch):
    """One prediction per patch column: the mean of the column's frequency patches through the head; padded columns are
    zero and equal to the clip run alone elsewhere; column_times gives each column's frames in seconds."""
    geometry = (dict(patch_size=16, frequency_stride=16, time_stride=8) if patch == "16x16"
                else dict(patch_size=(32, 4), frequency_stride=32, time_stride=4))
    model = randomize(SSAMBAForAudioFrameClassification(tiny_config(max_length=64, **geometry)), seed=3).eval()
    x = torch.randn(2, 64, 32)
    with torch.no_grad():
        out = model(x)
        hidden = model.ssamba(x).last_hidden_state[:, 1:]
        grid = (2, 7) if patch == "16x16" else (1, 16)
        assert out.logits.shape == (2, grid[1], 3)
        columns = hidden.reshape(2, grid[0], grid[1], 32).mean(1)
        torch.testing.assert_close(out.logits, model.classifier(columns))
        mask = torch.ones(2, 64, dtype=torch.long)
        mask[1, 40:] = 0
        padded = model(x, attention_mask=mask).logits
        alone = model(x[1:2, :40]).logits[0]
        torch.testing.assert_close(padded[1, :alone.shape[0]], alone, rtol=1e-5, atol=1e-5)
        assert torch.all(padded[1, alone.shape[0]:] == 0)
        torch.testing.assert_close(padded[0], out.logits[0], rtol=1e-5, atol=1e-5)
    times = model.column_times(3)
    stride, width = (8, 16) if patch == "16x16" else (4, 4)
    torch.testing.assert_close(times, torch.tensor([[0.0, width], [stride, stride + width],
                                                    [2 * stride, 2 * stride + width]], dtype=torch.float64) / 100)


def test_without_position_embeddings_any_length_runs_as_is(tmp_path):
    """use_position_embeddings=False: no grid-shaped parameter, inputs of any length need no interpolation, and the
    frame classifier's per-column logits on a long input come from the same weights after a save/load."""
    config = tiny_config(max_length=64, patch_size=(32, 4), frequency_stride=32, time_stride=4,
                         use_position_embeddings=False)
    model = randomize(SSAMBAForAudioFrameClassification(config), seed=6).eval()
    assert not any("position_embeddings" in name for name, _ in model.named_parameters())
    long = torch.randn(1, 400, 32)
    with torch.no_grad():
        logits = model(long).logits
    assert logits.shape == (1, 100, 3) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):  # the default layout still asks
        SSAMBAForAudioFrameClassification(tiny_config(max_length=64, patch_size=(32, 4), frequency_stride=32,
                                                      time_stride=4)).eval()(long)
    model.save_pretrained(tmp_path)
    loaded = SSAMBAForAudioFrameClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.use_position_embeddings is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(long).logits, logits)
    model.resize_position_embeddings(time_stride=2)  # only the stride changes
    assert model.config.time_stride == 2 and model(long).logits.shape == (1, 199, 3)


def test_frame_classification_losses_and_label_errors():
    """Class labels -> cross-entropy over the non-ignored valid columns; float labels -> BCE (multi-label); padded
    columns never count; wrong shapes or ids raise clear errors."""
    config = tiny_config(max_length=64, patch_size=(32, 4), frequency_stride=32, time_stride=4)
    model = randomize(SSAMBAForAudioFrameClassification(config), seed=4).eval()
    x = torch.randn(2, 64, 32)
    mask = torch.ones(2, 64, dtype=torch.long)
    mask[1, 32:] = 0  # clip 1: 8 of 16 columns valid
    labels = torch.randint(0, 3, (2, 16), generator=torch.Generator().manual_seed(0))
    labels[0, :3] = -100
    out = model(x, attention_mask=mask, labels=labels)
    keep = torch.ones(2, 16, dtype=torch.bool)
    keep[0, :3] = False
    keep[1, 8:] = False
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    multi = torch.rand(2, 16, 3, generator=torch.Generator().manual_seed(1)).round()
    out = model(x, attention_mask=mask, labels=multi)
    valid = torch.ones(2, 16, dtype=torch.bool)
    valid[1, 8:] = False
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits[valid], multi[valid]))
    out.loss.backward()
    assert model.classifier.dense.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one label per output column"):
        model(x, labels=torch.zeros(2, 15, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        model(x, labels=torch.full((2, 16), 3))
    with pytest.raises(ValueError, match="multi-label"):
        model(x, labels=torch.zeros(2, 16, 2))


def test_hidden_states_count_and_shapes():
    config = tiny_config(num_hidden_layers=6)
    model = SSAMBAModel(config).eval()
    x = torch.randn(2, 48, 32)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 1 + 6, 32) and out.pooler_output.shape == (2, 32)
    assert len(out.hidden_states) == 6 + 1
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 1:].mean(1))
    unpaired = SSAMBAModel(tiny_config(num_hidden_layers=3, bidirectional_layer_pairing=False)).eval()
    with torch.no_grad():
        assert len(unpaired(x, output_hidden_states=True).hidden_states) == 3 + 1
        assert model(x).hidden_states is None


def test_gradient_checkpointing_same_loss_and_grads():
    torch.manual_seed(0)
    model = randomize(SSAMBAForAudioClassification(tiny_config()), seed=2).train()
    x, labels = torch.randn(2, 48, 32), torch.tensor([0, 2])
    loss = model(x, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.ssamba.layers)
    loss_ckpt = model(x, labels=labels).loss
    loss_ckpt.backward()
    torch.testing.assert_close(loss_ckpt, loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_problem_types_match_manual_losses():
    x = torch.randn(2, 48, 32)
    model = randomize(SSAMBAForAudioClassification(tiny_config()), seed=3).eval()
    labels = torch.tensor([1, 2])
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    multi = randomize(SSAMBAForAudioClassification(tiny_config(problem_type="multi_label_classification")), 3).eval()
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = multi(x, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))
    regression = SSAMBAForAudioClassification(tiny_config(num_labels=1)).eval()
    values = torch.tensor([0.5, -1.0])
    out = regression(x, labels=values)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), values))
    assert SSAMBAForAudioClassification.accepts_loss_kwargs is False


def test_input_errors():
    model = SSAMBAForAudioClassification(tiny_config()).eval()
    with pytest.raises(ValueError, match="mel bins"):
        model(torch.randn(1, 48, 40))
    with pytest.raises(ValueError, match=r"\(batch, time, num_mel_bins\)"):
        model(torch.randn(48, 32))
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(torch.randn(1, 96, 32))
    assert model(torch.randn(1, 96, 32), interpolate_pos_encoding=True).logits.shape == (1, 3)


# ---------------------------------------------------------------------------------------------- pretraining


def naive_ssast_losses(model, x, mask_index, generative_mask_index):
    """SSAST's mpc/mpg written as its loops: per-clip masking, NCE over the clip's masked patches, MSE."""
    config = model.config
    p = (config.frequency_patch_size, config.time_patch_size)
    spec = x.unsqueeze(1).transpose(2, 3)
    patches = torch.nn.Unfold(kernel_size=p, stride=p)(spec).transpose(1, 2)
    emb = model.ssamba.embeddings

    def encode(index):
        tokens = emb.patch_embeddings.projection(spec).flatten(2).transpose(1, 2)
        dense = torch.ones_like(tokens)
        for i in range(x.shape[0]):
            dense[i, index[i], :] = 0
        tokens = tokens * dense + (1 - dense) * emb.mask_token.expand(x.shape[0], tokens.shape[1], -1)
        return torch.cat([emb.cls_token.expand(x.shape[0], -1, -1), tokens], 1) + emb.position_embeddings

    # run the encoder stack on hand-masked tokens through the model's own layers
    def stack(tokens):
        h, residual = tokens, None
        layers = model.ssamba.layers
        for i in range(len(layers) // 2):
            hf, rf = layers[2 * i](h, residual)
            hb, rb = layers[2 * i + 1](h.flip([1]), None if residual is None else residual.flip([1]))
            h, residual = hf + hb.flip([1]), rf + rb.flip([1])
        h = model.ssamba.norm_f(residual + h)
        return model.ssamba.norm_f(h)

    out = stack(encode(mask_index))
    nce, correct = 0.0, 0.0
    M = mask_index.shape[1]
    for i in range(x.shape[0]):
        pred = model.discriminative_head(out[i, mask_index[i] + 1])
        total = patches[i, mask_index[i]] @ pred.T
        # SSAST: self.softmax = nn.Softmax(dim=-1); correct += (argmax(self.softmax(total), dim=0) == arange(M))
        correct += (torch.argmax(torch.softmax(total, -1), 0) == torch.arange(M)).sum()
        nce += torch.diag(torch.log_softmax(total, -1)).sum()
    nce = nce / (-1.0 * x.shape[0] * M)
    out = stack(encode(generative_mask_index))
    pred = torch.stack([model.generative_head(out[i, generative_mask_index[i] + 1]) for i in range(x.shape[0])])
    target = torch.stack([patches[i, generative_mask_index[i]] for i in range(x.shape[0])])
    return nce, correct / (x.shape[0] * M), ((pred - target) ** 2).mean()


@pytest.mark.parametrize("patch", [16, (32, 8)], ids=["square", "frame"])
def test_pretraining_losses_match_ssast_loops(patch):
    frequency, time = (patch, patch) if isinstance(patch, int) else patch
    config = tiny_config(num_mel_bins=32, max_length=96, mask_patch_count=5, patch_size=patch,
                         frequency_stride=frequency, time_stride=time)  # 2 x 6 or 1 x 12 patches
    model = randomize(SSAMBAForPreTraining(config), seed=4).eval()
    x = torch.randn(2, 96, 32)
    mask_index = model.sample_masks(2)
    generative_index = model.sample_masks(2)
    with torch.no_grad():
        out = model(x, mask_index=mask_index, generative_mask_index=generative_index)
        nce, acc, mse = naive_ssast_losses(model, x, mask_index, generative_index)
    torch.testing.assert_close(out.discriminative_loss, nce, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.discriminative_accuracy, acc.float())
    torch.testing.assert_close(out.generative_loss, mse, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss, nce + 10 * mse, rtol=1e-4, atol=1e-5)
    model.train()
    loss = model(x).loss
    loss.backward()
    assert model.ssamba.embeddings.mask_token.grad.abs().sum() > 0
    assert model.generative_head[0].weight.grad.abs().sum() > 0


def test_cluster_masks():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        index = cluster_mask_indices((8, 64), 400, 3, generator=g)
        assert index.numel() == 400 and index.unique().numel() == 400
        assert index.min() >= 1 and index.max() < 512
    random_index = cluster_mask_indices((8, 64), 100, 0, generator=g)
    assert random_index.unique().numel() == 100
    # clusters: a 3x3 square cluster covers neighbours in time and frequency
    small = cluster_mask_indices((8, 64), 8, 3, generator=torch.Generator().manual_seed(1))
    grid = torch.zeros(512, dtype=torch.bool)
    grid[small] = True
    assert grid.reshape(8, 64).any(0).sum() <= 5 + 5  # two clusters at most touch few time columns
    with pytest.raises(ValueError, match="mask_patch_count"):
        cluster_mask_indices((2, 3), 6)


# ---------------------------------------------------------------------------------------------- position embeddings


def test_resize_position_embeddings_follows_ssast():
    config = tiny_config(num_mel_bins=48, max_length=128)  # pretraining grid 3 x 8
    model = randomize(SSAMBAForAudioClassification(config), seed=5).eval()
    old = model.ssamba.embeddings.position_embeddings.detach().clone()
    model.resize_position_embeddings(max_length=48, frequency_stride=8, time_stride=8)
    new_grid = model.config.grid_size
    assert new_grid == (5, 5) and model.ssamba.embeddings.patch_embeddings.projection.stride == (8, 8)
    grid = old[:, 1:].reshape(1, 3, 8, 32).permute(0, 3, 1, 2)
    expected = grid[:, :, :, 8 // 2 - 5 // 2: 8 // 2 - 5 // 2 + 5]  # time: centre cut
    expected = F.interpolate(expected, size=(5, 5), mode="bilinear")  # frequency: interpolation
    expected = torch.cat([old[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 25, 32)], 1)
    torch.testing.assert_close(model.ssamba.embeddings.position_embeddings, expected)
    assert model(torch.randn(2, 48, 48)).logits.shape == (2, 3)
    resized = resize_grid_embeddings(old[:, 1:], (3, 8), (3, 8))
    torch.testing.assert_close(resized, old[:, 1:])


# ---------------------------------------------------------------------------------------------- pipeline, LoRA, remote


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory):
    path = tmp_path_factory.mktemp("ssamba_clf")
    config = tiny_config(num_mel_bins=128, max_length=128, id2label={0: "yes", 1: "no", 2: "up"},
                         label2id={"yes": 0, "no": 1, "up": 2})
    model = randomize(SSAMBAForAudioClassification(config), seed=6).eval()
    model.save_pretrained(path)
    SSAMBAFeatureExtractor.from_preset("speechcommands").save_pretrained(path)
    return path, model


def test_pipeline_file_array_dict(saved_classifier, tmp_path):
    import soundfile
    from transformers import pipeline

    path, model = saved_classifier
    from mamba_zoo import SoundfileAudioClassificationPipeline

    # with mamba-zoo installed, the checkpoint's pipeline class is passed explicitly (or: trust_remote_code=True)
    clf = pipeline("audio-classification", model=str(path), pipeline_class=SoundfileAudioClassificationPipeline)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    fe = SSAMBAFeatureExtractor.from_preset("speechcommands")
    with torch.no_grad():
        probs = model(**fe(audio, sampling_rate=16000, return_tensors="pt")).logits.softmax(-1)[0]
    best = model.config.id2label[int(probs.argmax())]

    from_array = clf(audio)
    assert from_array[0]["label"] == best and abs(from_array[0]["score"] - float(probs.max())) < 1e-5
    assert clf({"raw": audio, "sampling_rate": 16000})[0] == from_array[0]
    assert clf({"array": audio, "sampling_rate": 16000})[0] == from_array[0]
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, audio, 16000, subtype="FLOAT")
    assert clf(str(wav))[0]["label"] == best
    # a 48 kHz stereo int16 file is mixed down and resampled
    stereo = np.stack([audio, audio], 1).repeat(3, axis=0)
    soundfile.write(tmp_path / "clip48.wav", (stereo * 32767).astype(np.int16), 48000)
    assert clf(str(tmp_path / "clip48.wav"))[0]["label"] in {"yes", "no", "up"}
    assert clf({"raw": audio.repeat(2), "sampling_rate": 32000})[0]["label"] in {"yes", "no", "up"}


def test_lora_trains_adapters_and_head_and_merges_exactly(saved_classifier):
    from peft import LoraConfig, get_peft_model

    path, _ = saved_classifier
    model = SSAMBAForAudioClassification.from_pretrained(path)
    lora = LoraConfig(r=4, lora_alpha=8, modules_to_save=["classifier"],
                      target_modules=["in_proj", "out_proj", "x_proj", "x_proj_b", "dt_proj", "dt_proj_b"])
    peft_model = get_peft_model(model, lora)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("dt_proj_b.lora_A" in n for n in trainable)
    # one optimisation step moves the adapters (B starts at zero) so the merge check is not vacuous
    x, labels = torch.randn(2, 128, 128), torch.tensor([0, 1])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    peft_model(input_values=x, labels=labels).loss.backward()
    optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        before = peft_model(input_values=x).logits
        base_only = SSAMBAForAudioClassification.from_pretrained(path).eval()(x).logits
        merged = peft_model.merge_and_unload()
        after = merged(x).logits
    assert (before - base_only).abs().max() > 1e-4  # adapters change the output
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_remote_code_load_without_mamba_zoo(saved_classifier, tmp_path):
    from remote_code_utils import run_without_mamba_zoo

    path, model = saved_classifier
    for name in ("configuration_ssamba.py", "modeling_ssamba.py", "mamba_layers.py", "selective_scan.py",
                 "feature_extraction_ssamba.py", "cpu_inference.py", "kernel_backends.py", "mamba_cache.py",
                 "sequence_utils.py", "cpu_scan_kernels.py"):
        assert (path / name).exists(), name
    x = torch.randn(2, 128, 128)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        expected = model(x).logits
    torch.save(expected, tmp_path / "expected.pt")
    run_without_mamba_zoo(
        f"""
        import numpy as np, torch
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification, pipeline
        path = {str(path)!r}
        model = AutoModelForAudioClassification.from_pretrained(path, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        x = torch.load({str(tmp_path / 'x.pt')!r})
        with torch.no_grad():
            torch.testing.assert_close(model(x).logits, torch.load({str(tmp_path / 'expected.pt')!r}))
        from transformers import AutoModel, AutoModelForPreTraining
        # every Auto* class of the family reads the checkpoint, not only the one that saved it
        assert type(AutoModel.from_pretrained(path, trust_remote_code=True)).__name__ == "SSAMBAModel"
        pretraining = AutoModelForPreTraining.from_pretrained(path, trust_remote_code=True)
        assert type(pretraining).__name__ == "SSAMBAForPreTraining"
        fe = AutoFeatureExtractor.from_pretrained(path, trust_remote_code=True)
        assert type(fe).__name__ == "SSAMBAFeatureExtractor"
        clf = pipeline("audio-classification", model=path, trust_remote_code=True)
        print(clf(np.zeros(16000, dtype=np.float32))[0]["label"])
        """,
        hf_home=str(tmp_path / "hf_home"),
    )


def test_training_scripts_smoke(tmp_path):
    """pretrain -> fine-tune with LoRA (position embeddings adapted to stride 10), on a tiny in-memory dataset."""
    import sys
    from pathlib import Path

    from datasets import ClassLabel, Dataset, DatasetDict
    from transformers import TrainingArguments

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
    import finetune_audio_classification as finetune
    import pretrain_ssamba as pretrain

    rng = np.random.default_rng(0)

    def split(n):
        labels = [i % 3 for i in range(n)]
        audio = [{"array": (0.1 * rng.standard_normal(16000) * (1 + y)).astype(np.float32), "sampling_rate": 16000}
                 for y in labels]
        return Dataset.from_dict({"audio": audio, "label": labels}).cast_column("label", ClassLabel(names=["a", "b", "c"]))

    data = DatasetDict(train=split(12), validation=split(6), test=split(6))
    common = dict(max_steps=2, per_device_train_batch_size=4, report_to=[], save_strategy="no", disable_tqdm=True)
    pre = pretrain.run(pretrain.PretrainModelArguments(hidden_size=32, num_hidden_layers=2, mask_patch_count=8),
                       pretrain.PretrainDataArguments(), TrainingArguments(output_dir=str(tmp_path / "pre"), **common),
                       dataset=data["train"])
    assert pre["steps"] == 2 and 0 <= pre["final_discriminative_accuracy"] <= 1
    full = finetune.run(finetune.ModelArguments(model_name_or_path=str(tmp_path / "pre"), frequency_stride=10,
                                                time_stride=10, lora=True),
                        finetune.DataArguments(), TrainingArguments(output_dir=str(tmp_path / "ft"), **common),
                        dataset=data)
    assert full["test_clips"] == 6 and "## Results" in (tmp_path / "ft" / "README.md").read_text()
    assert full["lora_merge_max_logit_diff"] < 1e-4
    merged = SSAMBAForAudioClassification.from_pretrained(tmp_path / "ft")
    assert type(merged) is SSAMBAForAudioClassification and merged.config.grid_size == (12, 12)
    # frame-based tokens (SSAST-Frame): pretrained and fine-tuned at the same geometry, no position resize
    pre = pretrain.run(pretrain.PretrainModelArguments(hidden_size=32, num_hidden_layers=2, mask_patch_count=8,
                                                       patch_frames=8),
                       pretrain.PretrainDataArguments(), TrainingArguments(output_dir=str(tmp_path / "pre-f"), **common),
                       dataset=data["train"])
    finetune.run(finetune.ModelArguments(model_name_or_path=str(tmp_path / "pre-f")), finetune.DataArguments(),
                 TrainingArguments(output_dir=str(tmp_path / "ft-f"), **common), dataset=data)
    frame = SSAMBAForAudioClassification.from_pretrained(tmp_path / "ft-f")
    assert frame.config.patch_size == [128, 8] and frame.config.grid_size == (1, 16)


@pytest.mark.parametrize("geometry", [dict(patch_size=16, frequency_stride=16, time_stride=6),
                                      dict(patch_size=(32, 4), frequency_stride=32, time_stride=4)])
def test_long_spectrograms_are_patch_embedded_in_blocks(monkeypatch, geometry):
    """Without gradients a long spectrogram is embedded a block of patch columns at a time (overlapping patches
    included): the same patch embeddings as one convolution."""
    from mamba_zoo import modeling_ssamba

    model = randomize(SSAMBAModel(tiny_config(max_length=64, **geometry)), seed=9).eval()
    patches = model.embeddings.patch_embeddings
    x = torch.randn(2, 301, 32)
    with torch.no_grad():
        whole, grid = patches(x)
        monkeypatch.setattr(modeling_ssamba, "PATCH_BLOCK_COLUMNS", 7)
        blocked, grid_blocked = patches(x)
    assert grid == grid_blocked and blocked.shape == whole.shape
    torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames,interpolate", [(64, False), (40, False), (301, True)])
@pytest.mark.parametrize("use_cls_token", [True, False])
def test_embeddings_are_patches_plus_positions_written_in_place(frames, interpolate, use_cls_token):
    """The embeddings are built in one tensor (cls, patches, positions added in place; an interpolated grid added
    through a permuted view): equal to the cls token and patches concatenated plus `position_embeddings_for`'s
    `(1, prefix + F * T, D)` sequence, for the configured grid, a shorter input and an interpolated one; and they
    stay differentiable with respect to every embedding parameter."""
    model = randomize(SSAMBAModel(tiny_config(max_length=64, use_cls_token=use_cls_token)), seed=frames).eval()
    embeddings = model.embeddings
    x = torch.randn(2, frames, 32)
    out, grid = embeddings(x, interpolate_pos_encoding=interpolate)
    patches, _ = embeddings.patch_embeddings(x)
    parts = [patches] if not use_cls_token else [embeddings.cls_token.expand(2, -1, -1), patches]
    expected = torch.cat(parts, dim=1) + embeddings.position_embeddings_for(grid, interpolate)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    out.square().sum().backward()
    for name, p in embeddings.named_parameters():
        if p.requires_grad and "mask_token" not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
