# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Offline metric modules for the Hugging Face `evaluate` library.

`evaluate.load("wer")` fetches the metric's script from the Hugging Face Hub, so a training run on a machine without
network access (or with `HF_HUB_OFFLINE=1` and an empty cache) cannot score itself. This subpackage ships the four
metrics the mamba-zoo recipes use as local `evaluate` module files, one `evaluate.Metric` subclass per file:

==============  =====================================================================  ============================
name            compute(...) arguments                                                 result
==============  =====================================================================  ============================
``accuracy``    predictions, references, normalize=True, sample_weight=None            ``{"accuracy": float}``
``f1``          predictions, references, labels=None, pos_label=1, average="binary",   ``{"f1": float}`` (an array
                sample_weight=None                                                     per label for average=None)
``wer``         predictions, references, concatenate_texts=False                       float
``cer``         predictions, references, concatenate_texts=False                       float
==============  =====================================================================  ============================

Names, argument names and output keys are those of the Hub's `accuracy`, `f1`, `wer` and `cer` metrics, so code
written against ``evaluate.load("accuracy")`` works unchanged with ``load_metric("accuracy")``:

    >>> from mamba_zoo.metrics import load_metric, load_metrics
    >>> load_metric("wer").compute(predictions=["the cat sat"], references=["the cat sat down"])
    0.25
    >>> load_metrics("accuracy", "f1").compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.666..., 'f1': 0.666...}

``metric_path(name)`` gives the module file itself, for code that calls ``evaluate.load(path)`` directly (or passes a
path where a metric name is expected). Like any local module, `evaluate` copies the file into its modules cache
(``$HF_HOME/modules/evaluate_modules/metrics/<name>/<hash>/``) and imports it from there; nothing is downloaded.

Importing this subpackage imports neither `evaluate` nor `datasets`: both are imported when a metric is loaded.
"""

import os


METRIC_NAMES = ("accuracy", "f1", "wer", "cer")

_HERE = os.path.dirname(os.path.abspath(__file__))

__all__ = ["METRIC_NAMES", "load_metric", "load_metrics", "metric_path"]


def metric_path(name):
    """Absolute path of the `evaluate` module file of metric `name` (one of `METRIC_NAMES`)."""
    if not isinstance(name, str) or name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}: mamba_zoo.metrics provides {', '.join(METRIC_NAMES)}.")
    return os.path.join(_HERE, f"{name}.py")


def _import_evaluate():
    try:
        import evaluate
    except ImportError as error:
        raise ImportError(
            "mamba_zoo.metrics needs the `evaluate` library: `pip install evaluate` "
            '(or `pip install "mamba-zoo[train]"`).'
        ) from error
    return evaluate


def load_metric(name, **kwargs):
    """`evaluate.load` of the local module of metric `name`; keyword arguments go to `evaluate.load` (e.g.
    `keep_in_memory=True`, `cache_dir=...`, `experiment_id=...`, `process_id=...`, `num_process=...`)."""
    path = metric_path(name)
    evaluate = _import_evaluate()
    return evaluate.load(path, **kwargs)


def load_metrics(*names, **kwargs):
    """`evaluate.combine` of the local metrics `names` (e.g. ``load_metrics("accuracy", "f1")``): one `compute` call
    returns all their results in one dict. Keyword arguments go to `load_metric` for every metric."""
    if not names:
        raise ValueError(f"load_metrics needs at least one metric name: one of {', '.join(METRIC_NAMES)}.")
    for name in names:
        metric_path(name)  # unknown names fail before anything is loaded
    evaluate = _import_evaluate()
    return evaluate.combine([load_metric(name, **kwargs) for name in names])
