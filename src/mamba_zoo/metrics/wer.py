# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Word error rate as an offline `evaluate` module, computed by `jiwer`.

Same interface as the Hub's `wer` metric: `compute(predictions, references, concatenate_texts=False)` returns a bare
float (not a dict). Load it with `mamba_zoo.metrics.load_metric("wer")` or `evaluate.load(<this file>)`.
"""

import datasets
import evaluate
import jiwer


_DESCRIPTION = """\
Word error rate (WER) measures how far a transcript is from its reference, in words: the minimum number of word
substitutions S, deletions D and insertions I that turn the reference into the prediction (a Levenshtein alignment
over words), divided by the number of reference words N: WER = (S + D + I) / N. The counts of all pairs are summed
before dividing, so long utterances weigh more than short ones. 0 is a perfect transcript; WER can exceed 1 when the
prediction has many extra words. Text is compared as given (case and punctuation count), apart from leading and
trailing spaces and runs of spaces, which are ignored; words are separated by spaces.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): transcripts to score.
    references (`list` of `str`): reference transcripts, one per prediction.
    concatenate_texts (`bool`, default False): accepted for compatibility with the Hub metric; the result is the same
        either way (errors and reference words are always pooled over all pairs).
Returns:
    (`float`): the word error rate, 0 for a perfect match.
Examples:
    >>> wer = mamba_zoo.metrics.load_metric("wer")
    >>> wer.compute(predictions=["the cat sat", "hello there"], references=["the cat sat down", "hello world"])
    0.3333333333333333
"""

_CITATION = """\
@inproceedings{morris2004wer,
  title     = {From {WER} and {RIL} to {MER} and {WIL}: improved evaluation measures for connected speech recognition},
  author    = {Morris, Andrew Cameron and Maier, Viktoria and Green, Phil},
  booktitle = {Proc. Interspeech 2004},
  pages     = {2765--2768},
  year      = {2004}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WER(evaluate.Metric):
    """Word error rate over all prediction / reference pairs (jiwer)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/jitsi/jiwer/"],
            reference_urls=["https://en.wikipedia.org/wiki/Word_error_rate"],
        )

    def _compute(self, predictions=None, references=None, concatenate_texts=False):
        # The Hub metric pools S + D + I and N over the pairs whether or not concatenate_texts is set; jiwer.wer on
        # the two lists does exactly that.
        return float(jiwer.wer(list(references), list(predictions)))
