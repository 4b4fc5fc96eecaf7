# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Accuracy as an offline `evaluate` module: the share of predictions equal to their reference label.

Same interface as the Hub's `accuracy` metric: `compute(predictions, references, normalize=True, sample_weight=None)`
returns `{"accuracy": float}`. Load it with `mamba_zoo.metrics.load_metric("accuracy")` or `evaluate.load(<this file>)`.
The file is self-contained (`evaluate` copies it into its modules cache and imports it from there).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """\
Accuracy is the fraction of examples whose predicted label equals the reference label:
(number of correct predictions) / (number of predictions). With sample weights, each example counts with its weight;
with normalize=False the (weighted) number of correct predictions is returned instead of the fraction.
Labels are integers (class ids); the metric does not care how many classes there are.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): reference (true) labels, as many as predictions.
    normalize (`bool`, default True): True returns the fraction of correct predictions, False their (weighted) count.
    sample_weight (`list` of `float`, optional): one non-negative weight per example; default all 1.
Returns:
    accuracy (`float`): in [0, 1] when normalize=True (1 = every prediction correct), else the weighted count of
        correct predictions.
Examples:
    >>> accuracy = mamba_zoo.metrics.load_metric("accuracy")
    >>> accuracy.compute(predictions=[0, 2, 1, 3], references=[0, 1, 2, 3])
    {'accuracy': 0.5}
    >>> accuracy.compute(predictions=[0, 2, 1, 3], references=[0, 1, 2, 3], normalize=False)
    {'accuracy': 2.0}
    >>> accuracy.compute(predictions=[0, 2, 1, 3], references=[0, 1, 2, 3], sample_weight=[3, 1, 1, 0])
    {'accuracy': 0.6}
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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Accuracy (sklearn.metrics.accuracy_score semantics, computed with numpy)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#accuracy-score"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(
                f"accuracy: {predictions.shape[0]} predictions but {references.shape[0]} references; "
                "they must pair up one to one."
            )
        correct = (predictions == references).astype(np.float64)
        if sample_weight is None:
            weights = np.ones_like(correct)
        else:
            weights = np.asarray(sample_weight, dtype=np.float64)
            if weights.shape != correct.shape:
                raise ValueError(f"accuracy: sample_weight has {weights.size} entries for {correct.size} examples.")
        if not normalize:
            return {"accuracy": float(np.dot(correct, weights))}
        if correct.size == 0 or weights.sum() == 0:
            raise ValueError("accuracy: no examples (or all sample weights zero): the fraction is undefined.")
        return {"accuracy": float(np.dot(correct, weights) / weights.sum())}
