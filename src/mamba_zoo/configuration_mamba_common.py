# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""What every mamba-zoo config shares: dt-rank resolution, validation and the mixer arguments of the Mamba fields.

A mixer argument comes from a config field only when the config declares that field (else the mixer's default): so
only SSAMBA and BlackMamba pass `time_step_floor` and `use_conv_bias`, only BlackMamba `time_step_init_scheme` and
`time_step_scale`, only SSAMBA and MambaCTC `divide_out` (MADEON's mixers never halve).
"""

import math

from .kernel_backends import BACKEND_CHOICES

MIXER_TYPES = ("mamba", "mamba2")
NORM_TYPES = ("layernorm", "rmsnorm")

# mixer argument -> config field, for `MambaMixer` and for `Mamba2Mixer`
_SHARED_MIXER_ARGS = {
    "d_model": "hidden_size", "d_state": "state_size", "d_conv": "conv_kernel", "expand": "expand",
    "dt_min": "time_step_min", "dt_max": "time_step_max", "dt_init_floor": "time_step_floor",
    "conv_bias": "use_conv_bias", "bias": "use_bias", "divide_out": "divide_out", "backend": "kernel_backend",
}
MAMBA_MIXER_ARGS = {
    **_SHARED_MIXER_ARGS, "dt_rank": "time_step_rank", "dt_init": "time_step_init_scheme",
    "dt_scale": "time_step_scale",
}
MAMBA2_MIXER_ARGS = {
    **_SHARED_MIXER_ARGS, "headdim": "mamba2_head_dim", "ngroups": "mamba2_n_groups",
    "chunk_size": "mamba2_chunk_size", "norm_eps": "layer_norm_eps",
}
_MAMBA2_FIELDS = ("mamba2_head_dim", "mamba2_n_groups", "mamba2_chunk_size")


class MambaMixerConfigMixin:
    """Shared behaviour of the mamba-zoo configs (a base before `PreTrainedConfig`); it declares no fields.

    A config's `__post_init__` ends with `super().__post_init__(**kwargs)` then `self.resolve_and_validate()`, so a bad
    field is a plain `ValueError` at construction; `@strict`'s `validate()` runs `validate_mixer_fields` and the
    config's own `validate_architecture` again (wrapping their errors).
    """

    # mixer arguments this family leaves at the mixer's default although it declares the field they come from
    mixer_args_at_default: tuple[str, ...] = ()
    # `AutoModel*` factory name -> "modeling_x.Class" for every model class of the family, set by mamba_zoo's
    # registration (`__init__.AUTO_CLASSES`): a saved checkpoint's auto_map then lets each of them load it with
    # trust_remote_code, not only the class that saved it
    family_auto_map: dict[str, str] = {}
    # the family's pipeline, named per model in `custom_pipelines` (importing mamba_zoo registers none globally):
    # (task, "module.Class", model Auto class, pipeline type), or None for a family without one
    checkpoint_pipeline: tuple[str, str, str, str] | None = None

    def add_checkpoint_pipeline(self, kwargs: dict) -> None:
        """Called first in `__post_init__`: default `custom_pipelines` to the family's pipeline, so that
        `pipeline(task, model=path, trust_remote_code=True)` builds it (or `pipeline_class=` with mamba-zoo installed);
        its module travels with the checkpoint. A fresh dict each time: transformers' pipeline() rewrites it."""
        if self.checkpoint_pipeline is not None:
            task, impl, auto_class, pipeline_type = self.checkpoint_pipeline
            kwargs.setdefault("custom_pipelines", {task: {"impl": impl, "pt": [auto_class], "type": pipeline_type}})

    def to_dict(self) -> dict:
        output = super().to_dict()
        if output.get("auto_map") and self.family_auto_map:
            output["auto_map"] = {**self.family_auto_map, **output["auto_map"]}
        return output

    def resolve_time_step_rank(self) -> int:
        """Replace `time_step_rank="auto"` by `ceil(hidden_size / 16)` (mamba-ssm's `dt_rank="auto"`); return it."""
        if self.time_step_rank == "auto":
            self.time_step_rank = math.ceil(self.hidden_size / 16)
        return self.time_step_rank

    def resolve_and_validate(self) -> None:
        """The end of every config's `__post_init__`: resolve the dt rank, then the shared and the config's checks."""
        self.resolve_time_step_rank()
        self.validate_mixer_fields()
        self.validate_architecture()

    def mixer_kwargs(self, layer_idx: int, bidirectional: bool) -> dict:
        """Keyword arguments of `Mamba2Mixer(**kwargs)` when `mixer_type == "mamba2"`, else of `MambaMixer(**kwargs)`
        (configs without a `mixer_type` field are Mamba-1), for layer `layer_idx`."""
        args = MAMBA2_MIXER_ARGS if getattr(self, "mixer_type", "mamba") == "mamba2" else MAMBA_MIXER_ARGS
        kwargs = {
            arg: getattr(self, name) for arg, name in args.items()
            if name in self.__dataclass_fields__ and arg not in self.mixer_args_at_default
        }
        return {**kwargs, "bidirectional": bidirectional, "layer_idx": layer_idx}

    def validate_mixer_fields(self) -> None:
        """Part of `@strict` validation: the mixer fields every config declares (and the Mamba-2 ones, if declared)."""
        self._require_positive_ints(
            ("hidden_size", "num_hidden_layers", "state_size", "expand", "conv_kernel", "time_step_rank")
            + tuple(name for name in _MAMBA2_FIELDS if name in self.__dataclass_fields__)
        )
        self._require(0 < self.time_step_min <= self.time_step_max, "time_step_min",
                      f"must be in (0, time_step_max={self.time_step_max}]", "They bound the initial time steps.")
        self._require(self.layer_norm_eps > 0, "layer_norm_eps", "must be > 0",
                      "It is added to the variance in every norm: use a small positive value such as 1e-5.")
        self._require_choice("kernel_backend", BACKEND_CHOICES, "Use 'auto' to pick the fastest kernel available.")
        if "mixer_type" in self.__dataclass_fields__:
            self._require_choice("mixer_type", MIXER_TYPES)
        if getattr(self, "mixer_type", "mamba") == "mamba2":
            inner, head_dim = self.expand * self.hidden_size, self.mamba2_head_dim
            if inner % head_dim or (inner // head_dim) % self.mamba2_n_groups:
                raise ValueError(
                    f"mixer_type='mamba2' needs expand * hidden_size ({inner}) divisible by mamba2_head_dim "
                    f"({head_dim}) into a number of heads divisible by mamba2_n_groups ({self.mamba2_n_groups})."
                )

    def _require(self, ok: bool, name: str, requirement: str, fix: str = "") -> None:
        """Raise `ValueError("<Config>.<name> <requirement>, got <value>. <fix>")` unless `ok`."""
        if not ok:
            raise ValueError(f"{type(self).__name__}.{name} {requirement}, got {getattr(self, name)!r}. {fix}".rstrip())

    def _require_positive_ints(self, names) -> None:
        for name in names:
            value = getattr(self, name)
            self._require(isinstance(value, int) and not isinstance(value, bool) and value > 0, name,
                          "must be a positive integer")

    def _require_probabilities(self, names) -> None:
        for name in names:
            self._require(0.0 <= getattr(self, name) < 1.0, name, "must be in [0, 1)")

    def _require_choice(self, name: str, choices: tuple, fix: str = "") -> None:
        self._require(getattr(self, name) in choices, name, f"must be one of {', '.join(map(repr, choices))}", fix)


__all__ = ["MAMBA2_MIXER_ARGS", "MAMBA_MIXER_ARGS", "MambaMixerConfigMixin"]
