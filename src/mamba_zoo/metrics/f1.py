# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""F1 score as an offline `evaluate` module: the harmonic mean of precision and recall, per class or averaged.

Same interface as the Hub's `f1` metric: `compute(predictions, references, labels=None, pos_label=1,
average="binary", sample_weight=None)` returns `{"f1": float}`, or `{"f1": numpy array}` (one score per label) for
`average=None`. The numbers follow `sklearn.metrics.f1_score` (computed here with numpy, no scikit-learn needed),
including its conventions: a class with no true and no predicted examples scores 0, and `average="binary"` needs at
most two distinct labels. Load it with `mamba_zoo.metrics.load_metric("f1")` or `evaluate.load(<this file>)`.
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """\
F1 balances precision (of the examples predicted as a class, the share that belong to it) and recall (of the examples
of a class, the share predicted as it): F1 = 2 * precision * recall / (precision + recall) = 2 TP / (2 TP + FP + FN),
counted per class. For a binary task only the positive class (pos_label) is scored. For more classes choose how the
per-class scores are combined: "micro" pools the counts of all classes first, "macro" takes the plain mean of the
per-class scores, "weighted" the mean weighted by each class's number of reference examples, and None returns one
score per class. A class whose 2 TP + FP + FN is zero scores 0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): reference (true) labels, as many as predictions.
    labels (`list` of `int`, optional): the classes to score, and their order for average=None. Default: every label
        that occurs in predictions or references, sorted. With "micro", only these classes' counts are pooled.
        Ignored when average="binary".
    pos_label (`int`, default 1): the positive class when average="binary".
    average (`str` or None, default "binary"): one of "binary", "micro", "macro", "weighted", or None.
    sample_weight (`list` of `float`, optional): one non-negative weight per example; default all 1.
Returns:
    f1 (`float`, or for average=None a numpy array with one score per label, a float when there is only one label):
        in [0, 1], higher is better.
Examples:
    >>> f1 = mamba_zoo.metrics.load_metric("f1")
    >>> f1.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 1])
    {'f1': 0.5}
    >>> f1.compute(predictions=[0, 2, 1, 0, 0], references=[0, 1, 2, 0, 1], average="macro")
    {'f1': 0.266...}
    >>> f1.compute(predictions=[0, 2, 1, 0, 0], references=[0, 1, 2, 0, 1], average=None)
    {'f1': array([0.8, 0. , 0. ])}
"""

_CITATION = """\
@article{pedregosa2011scikit,
  title   = {Scikit-learn: Machine Learning in {P}ython},
  author  = {Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
             Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
             Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal = {Journal of Machine Learning Research},
  volume  = {12},
  pages   = {2825--2830},
  year    = {2011}
}
"""

_AVERAGES = ("binary", "micro", "macro", "weighted", None)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    """F1 score (sklearn.metrics.f1_score semantics, computed with numpy)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        if average not in _AVERAGES:
            raise ValueError(f"f1: average must be one of {_AVERAGES}, got {average!r}.")
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.ndim != 1 or predictions.shape != references.shape:
            raise ValueError(
                f"f1: predictions {predictions.shape} and references {references.shape} must be two equally long "
                "lists of labels."
            )
        if sample_weight is None:
            weights = np.ones(predictions.shape[0], dtype=np.float64)
        else:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.shape != predictions.shape:
                raise ValueError(f"f1: sample_weight has {weights.size} entries for {predictions.size} examples.")

        present = np.union1d(references, predictions)
        if average == "binary":
            if present.size > 2:
                raise ValueError(
                    f"f1: the labels are multiclass ({present.tolist()}) but average='binary'; choose average from "
                    "'micro', 'macro', 'weighted' or None."
                )
            if pos_label not in present and present.size >= 2:
                raise ValueError(
                    f"f1: pos_label={pos_label!r} is not a valid label; it should be one of {present.tolist()}."
                )
            labels = np.asarray([pos_label])
        elif labels is None:
            labels = present
        else:
            labels = np.asarray(list(labels))

        # Weighted true positives, predicted and true counts per scored label.
        true_positives = np.array([weights[(predictions == c) & (references == c)].sum() for c in labels], np.float64)
        predicted = np.array([weights[predictions == c].sum() for c in labels], np.float64)
        actual = np.array([weights[references == c].sum() for c in labels], np.float64)

        if average == "micro":
            true_positives, predicted, actual = true_positives.sum(keepdims=True), predicted.sum(), actual.sum()
        denominators = np.atleast_1d(predicted + actual)  # = 2 TP + FP + FN
        scores = np.zeros_like(denominators)
        np.divide(2.0 * true_positives, denominators, out=scores, where=denominators > 0)

        if average == "macro":
            scores = scores.mean() if scores.size else np.float64(0.0)
        elif average == "weighted":
            scores = np.float64(np.dot(scores, actual) / actual.sum()) if actual.sum() > 0 else np.float64(0.0)
        scores = np.asarray(scores, dtype=np.float64)
        # As the Hub metric: a bare float whenever there is a single score (average=None with one label included).
        return {"f1": float(scores.reshape(-1)[0]) if scores.size == 1 else scores}
