"""The config behaviour every family shares (`configuration_mamba_common.MambaMixerConfigMixin`): the mixer arguments
each config gives, the dt-rank resolution, the shared validation and the save/load round trip of the mixer fields."""

import inspect
import math

import pytest

from mamba_zoo import (
    BlackMambaConfig,
    BlackMambaModel,
    Mamba2Mixer,
    MambaASRConfig,
    MambaASRModel,
    MambaCTCConfig,
    MambaCTCModel,
    MambaMixer,
    SSAMBAConfig,
    SSAMBAModel,
)
from mamba_zoo.configuration_mamba_common import MAMBA2_MIXER_ARGS, MAMBA_MIXER_ARGS

# tiny valid configs of each family (as in tests/zoo_cases.py), keyword overrides on top
BASE_KWARGS = {
    SSAMBAConfig: dict(hidden_size=32, num_hidden_layers=2, num_mel_bins=32, max_length=48, state_size=8),
    MambaCTCConfig: dict(vocab_size=16, hidden_size=32, num_hidden_layers=2, subsampling_conv_channels=8,
                         intermediate_size=64, state_size=8),
    MambaASRConfig: dict(vocab_size=60, hidden_size=32, num_hidden_layers=2, expand=2, state_size=8,
                         speech_input="units", num_units=20, unit_token_offset=40),
    BlackMambaConfig: dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, state_size=8, ffn_hidden_size=40,
                           num_experts=4),
}
CONFIG_CLASSES = list(BASE_KWARGS)
MODEL_CLASSES = {SSAMBAConfig: SSAMBAModel, MambaCTCConfig: MambaCTCModel, MambaASRConfig: MambaASRModel,
                 BlackMambaConfig: BlackMambaModel}


def tiny(config_class, **overrides):
    return config_class(**{**BASE_KWARGS[config_class], **overrides})


def hyperparameters(mixer) -> dict:
    """What a mixer was built with (every constructor argument it keeps, and the ones visible in its modules)."""
    names = ("d_model", "d_state", "d_conv", "d_inner", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale",
             "dt_init_floor", "bidirectional", "divide_out", "backend", "layer_idx", "headdim", "ngroups", "chunk_size")
    found = {name: getattr(mixer, name) for name in names if hasattr(mixer, name)}
    found.update(kind=type(mixer).__name__, conv_bias=mixer.conv1d.bias is not None,
                 bias=mixer.in_proj.bias is not None)
    if isinstance(mixer, Mamba2Mixer):
        found["norm_eps"] = mixer.norm.eps
    return found


# (config, the bidirectional flag its model gives the mixers, the hyperparameters each mixer must have). Fields are set
# away from their defaults so that a field that is dropped or sent to the wrong argument shows.
MIXER_CASES = {
    "ssamba": (
        tiny(SSAMBAConfig, conv_kernel=3, time_step_rank=3, time_step_min=0.002, time_step_max=0.05,
             time_step_floor=2e-4, use_conv_bias=False, divide_out=False, kernel_backend="reference"),
        lambda config: config.bidirectional_mixer,
        dict(kind="MambaMixer", d_model=32, d_state=8, d_conv=3, d_inner=64, dt_rank=3, dt_min=0.002, dt_max=0.05,
             dt_init="random", dt_scale=1.0, dt_init_floor=2e-4, conv_bias=False, bias=False, bidirectional=True,
             divide_out=False, backend="reference"),
    ),
    "ssamba-unidirectional": (
        tiny(SSAMBAConfig, bidirectional_mixer=False, use_bias=True),
        lambda config: config.bidirectional_mixer,
        dict(kind="MambaMixer", dt_rank=2, bidirectional=False, divide_out=True, bias=True, conv_bias=True,
             dt_init_floor=1e-4),
    ),
    "ctc": (
        tiny(MambaCTCConfig, expand=3, time_step_min=0.002, divide_out=False, kernel_backend="cpu"),
        lambda config: True,
        dict(kind="MambaMixer", d_inner=96, dt_rank=2, dt_min=0.002, dt_max=0.1, bidirectional=True, divide_out=False,
             conv_bias=True, dt_init_floor=1e-4, backend="cpu"),
    ),
    "ctc-conmamba": (
        tiny(MambaCTCConfig, block_type="conmamba", time_step_rank=5),
        lambda config: True,
        dict(kind="MambaMixer", dt_rank=5, bidirectional=True, divide_out=True),
    ),
    "ctc-mamba2": (
        tiny(MambaCTCConfig, mixer_type="mamba2", mamba2_head_dim=16, mamba2_n_groups=2, mamba2_chunk_size=8,
             layer_norm_eps=1e-3),
        lambda config: True,
        # MambaForCTC's gated norm keeps Mamba2Mixer's eps, not layer_norm_eps
        dict(kind="Mamba2Mixer", d_state=8, d_inner=64, headdim=16, ngroups=2, chunk_size=8, norm_eps=1e-5,
             bidirectional=True, divide_out=True),
    ),
    "asr-parallel": (
        tiny(MambaASRConfig, speech_prefix="parallel", time_step_max=0.2, kernel_backend="reference"),
        lambda config: config.speech_prefix == "parallel",
        dict(kind="MambaMixer", d_inner=64, dt_rank=2, dt_max=0.2, bidirectional=True, divide_out=False,
             backend="reference"),
    ),
    "asr-serial-mamba2": (
        tiny(MambaASRConfig, speech_prefix="serial", mixer_type="mamba2", mamba2_head_dim=16, mamba2_chunk_size=16,
             layer_norm_eps=1e-3),
        lambda config: config.speech_prefix == "parallel",
        dict(kind="Mamba2Mixer", headdim=16, ngroups=1, chunk_size=16, norm_eps=1e-3, bidirectional=False,
             divide_out=False),
    ),
    "blackmamba": (
        tiny(BlackMambaConfig, num_hidden_layers=None, layer_types=["mamba", "moe", "mlp", "mamba"], conv_kernel=2,
             time_step_init_scheme="constant", time_step_scale=0.5, time_step_floor=2e-4, use_conv_bias=False),
        lambda config: False,
        dict(kind="MambaMixer", d_conv=2, dt_rank=2, dt_init="constant", dt_scale=0.5, dt_init_floor=2e-4,
             conv_bias=False, bidirectional=False, divide_out=False),
    ),
}


@pytest.mark.parametrize("case", list(MIXER_CASES))
def test_mixer_kwargs_build_the_mixers_of_the_model(case):
    config, bidirectional, expected = MIXER_CASES[case]
    model = MODEL_CLASSES[type(config)](config)
    mixers = {i: block.mixer for i, block in enumerate(model.layers)
              if isinstance(block.mixer, (MambaMixer, Mamba2Mixer))}
    assert len(mixers) == (2 if case == "blackmamba" else config.num_hidden_layers)
    for layer_idx, mixer in mixers.items():
        mixer_class = Mamba2Mixer if getattr(config, "mixer_type", "mamba") == "mamba2" else MambaMixer
        rebuilt = mixer_class(**config.mixer_kwargs(layer_idx, bidirectional(config)))
        assert hyperparameters(rebuilt) == hyperparameters(mixer)
        assert hyperparameters(mixer).items() >= {**expected, "layer_idx": layer_idx}.items()


def test_mixer_argument_tables_name_real_constructor_arguments():
    assert set(MAMBA_MIXER_ARGS) <= set(inspect.signature(MambaMixer).parameters)
    assert set(MAMBA2_MIXER_ARGS) <= set(inspect.signature(Mamba2Mixer).parameters)


@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_time_step_rank_auto_resolves_at_construction(config_class):
    for hidden_size in (32, 40):
        config = tiny(config_class, hidden_size=hidden_size, time_step_rank="auto")
        assert config.time_step_rank == math.ceil(hidden_size / 16) == config.resolve_time_step_rank()
    assert tiny(config_class, time_step_rank=7).time_step_rank == 7


@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
@pytest.mark.parametrize("overrides, field", [
    (dict(layer_norm_eps=-1.0), "layer_norm_eps"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(time_step_min=0.2, time_step_max=0.1), "time_step_min"),
    (dict(time_step_min=0.0), "time_step_min"),
    (dict(kernel_backend="gpu"), "kernel_backend"),
    (dict(time_step_rank=0), "time_step_rank"),
    (dict(state_size=0), "state_size"),
])
def test_every_config_rejects_bad_mixer_fields(config_class, overrides, field):
    with pytest.raises(ValueError, match=rf"{config_class.__name__}\.{field} .*"):
        tiny(config_class, **overrides)


@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_validate_rechecks_a_changed_config(config_class):
    config = tiny(config_class)
    config.validate()
    config.layer_norm_eps = -1.0
    with pytest.raises(Exception, match="layer_norm_eps"):
        config.validate()


@pytest.mark.parametrize("config_class", CONFIG_CLASSES)
def test_save_and_load_keep_the_mixer_fields(config_class, tmp_path):
    for name, overrides in (("auto", dict()), ("explicit", dict(time_step_rank=5, layer_norm_eps=1e-6))):
        config = tiny(config_class, **overrides)
        config.save_pretrained(tmp_path / name)
        loaded = config_class.from_pretrained(tmp_path / name)
        assert loaded.time_step_rank == config.time_step_rank == overrides.get("time_step_rank", 2)
        assert loaded.layer_norm_eps == config.layer_norm_eps == overrides.get("layer_norm_eps", 1e-5)
        assert loaded.mixer_kwargs(1, True) == config.mixer_kwargs(1, True)
