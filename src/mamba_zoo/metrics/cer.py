# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Character error rate as an offline `evaluate` module, computed by `jiwer`.

Same interface as the Hub's `cer` metric: `compute(predictions, references, concatenate_texts=False)` returns a bare
float (not a dict). Load it with `mamba_zoo.metrics.load_metric("cer")` or `evaluate.load(<this file>)`.
"""

import datasets
import evaluate
import jiwer


_DESCRIPTION = """\
Character error rate (CER) is the word error rate computed over characters: the minimum number of character
substitutions S, deletions D and insertions I that turn the reference into the prediction, divided by the number of
reference characters N: CER = (S + D + I) / N. Spaces between words are characters too. Leading and trailing spaces
and runs of spaces are ignored (a run counts as one space). The counts of all pairs are summed before dividing.
0 is a perfect transcript; CER can exceed 1 when the prediction is much longer than the reference. It suits
languages without spaces between words and character-level (e.g. CTC) models.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): transcripts to score.
    references (`list` of `str`): reference transcripts, one per prediction.
    concatenate_texts (`bool`, default False): False aligns each prediction with its own reference; True joins all
        predictions into one string and all references into another (with nothing between them) and aligns those,
        as the Hub metric does.
Returns:
    (`float`): the character error rate, 0 for a perfect match.
Examples:
    >>> cer = mamba_zoo.metrics.load_metric("cer")
    >>> cer.compute(predictions=["the cat", "helo"], references=["the bat", "hello"])
    0.16666666666666666
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


def _transform(concatenate_texts):
    """Per text: runs of whitespace become one space, leading / trailing whitespace goes (as the Hub metric, and unlike
    jiwer's own `cer` default, which only strips); with `concatenate_texts`, all texts are then joined into one with
    nothing between them; finally each text becomes its list of characters."""
    steps = [jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
    if concatenate_texts:
        steps.append(jiwer.ReduceToSingleSentence(""))
    steps.append(jiwer.ReduceToListOfListOfChars())
    return jiwer.Compose(steps)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CER(evaluate.Metric):
    """Character error rate over all prediction / reference pairs (jiwer)."""

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
        # Without concatenate_texts, jiwer aligns each pair on its own and pools S + D + I and N over the pairs.
        transform = _transform(concatenate_texts)
        return float(
            jiwer.cer(
                list(references), list(predictions), reference_transform=transform, hypothesis_transform=transform
            )
        )
