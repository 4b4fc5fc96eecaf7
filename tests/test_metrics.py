# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""mamba_zoo.metrics: the offline `evaluate` modules accuracy / f1 / wer / cer give the numbers of independent
plain-Python computations on random inputs (labels; word strings scored against a Levenshtein distance written here),
combine through `evaluate.combine`, load with `HF_HUB_OFFLINE=1` and an empty `HF_HOME` (in a subprocess, where the
Hub's own `accuracy` does not load), and keep the subpackage free of heavy imports."""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest


evaluate = pytest.importorskip("evaluate")

from mamba_zoo import metrics as zoo_metrics  # noqa: E402


ROOT = Path(__file__).resolve().parents[1]
SEEDS = [11, 23, 57, 101, 313]
WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "red", "blue", "ran", "zebra", "xylophone", "i", "of"]


@pytest.fixture(scope="module")
def classification():
    return {name: zoo_metrics.load_metric(name) for name in ("accuracy", "f1")}


@pytest.fixture(scope="module")
def text_metrics():
    pytest.importorskip("jiwer")
    return {name: zoo_metrics.load_metric(name) for name in ("wer", "cer")}


# ---------------------------------------------------------------------------------------------------------------------
# Independent references (plain Python)


def plain_accuracy(predictions, references, weights=None, normalize=True):
    weights = [1.0] * len(references) if weights is None else weights
    correct = sum(w for p, r, w in zip(predictions, references, weights) if p == r)
    return correct / sum(weights) if normalize else correct


def plain_f1_per_label(predictions, references, labels, weights=None):
    """{label: (tp, predicted, actual)} with weighted counts."""
    weights = [1.0] * len(references) if weights is None else weights
    counts = {}
    for label in labels:
        tp = sum(w for p, r, w in zip(predictions, references, weights) if p == label and r == label)
        predicted = sum(w for p, w in zip(predictions, weights) if p == label)
        actual = sum(w for r, w in zip(references, weights) if r == label)
        counts[label] = (tp, predicted, actual)
    return counts


def _f1_from_counts(tp, predicted, actual):
    precision = tp / predicted if predicted else 0.0
    recall = tp / actual if actual else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def plain_f1(predictions, references, average, labels=None, pos_label=1, weights=None):
    if average == "binary":
        labels = [pos_label]
    elif labels is None:
        labels = sorted(set(predictions) | set(references))
    counts = plain_f1_per_label(predictions, references, labels, weights)
    per_label = [_f1_from_counts(*counts[label]) for label in labels]
    if average == "binary":
        return per_label[0]
    if average is None:
        return per_label
    if average == "macro":
        return sum(per_label) / len(per_label)
    if average == "weighted":
        supports = [counts[label][2] for label in labels]
        return sum(f * s for f, s in zip(per_label, supports)) / sum(supports)
    assert average == "micro"
    tp, predicted, actual = (sum(c[i] for c in counts.values()) for i in range(3))
    return _f1_from_counts(tp, predicted, actual)


def levenshtein(a, b):
    """Minimum number of substitutions, deletions and insertions turning sequence `a` into sequence `b`."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def normalise_spaces(text):
    """Runs of spaces become one, leading and trailing spaces go (the texts here contain no other whitespace)."""
    return " ".join(part for part in text.split(" ") if part)


def words(text):
    text = normalise_spaces(text)
    return text.split(" ") if text else []


def plain_wer(predictions, references):
    errors = sum(levenshtein(words(r), words(p)) for p, r in zip(predictions, references))
    return errors / sum(len(words(r)) for r in references)


def plain_cer(predictions, references):
    errors = sum(levenshtein(normalise_spaces(r), normalise_spaces(p)) for p, r in zip(predictions, references))
    return errors / sum(len(normalise_spaces(r)) for r in references)


def plain_cer_concatenated(predictions, references):
    reference = "".join(normalise_spaces(r) for r in references)
    prediction = "".join(normalise_spaces(p) for p in predictions)
    return levenshtein(reference, prediction) / len(reference)


def random_sentence(rng, min_words, max_words, messy=False):
    words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
    if not messy:
        return " ".join(words)
    # Runs of spaces and leading / trailing spaces, which both metrics ignore.
    text = "".join(w + " " * rng.randint(1, 3) for w in words)
    return " " * rng.randint(0, 2) + text


def random_transcripts(rng, n, messy=False):
    references = [random_sentence(rng, 1, 9, messy) for _ in range(n)]
    predictions = []
    for reference in references:
        words = reference.split()
        roll = rng.random()
        if roll < 0.15:
            predictions.append(reference)  # a perfect transcript now and then
        elif roll < 0.25:
            predictions.append("")  # an empty hypothesis: every reference word deleted
        else:
            # Edit the reference: substitute, drop and insert words at random, sometimes a whole new sentence.
            edited = []
            for word in words:
                r = rng.random()
                if r < 0.2:
                    edited.append(rng.choice(WORDS))
                elif r < 0.3:
                    continue
                else:
                    edited.append(word)
                if rng.random() < 0.1:
                    edited.append(rng.choice(WORDS))
            predictions.append(" ".join(edited) if rng.random() < 0.8 else random_sentence(rng, 0, 6))
    if messy:
        predictions = [" " + p.replace(" ", "  ") + "  " for p in predictions]
    return predictions, references


def test_levenshtein_reference_itself():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3
    assert levenshtein(["a", "b", "c"], ["a", "c", "d"]) == 2
    assert normalise_spaces("  a   b  ") == "a b"


# ---------------------------------------------------------------------------------------------------------------------
# The subpackage's API


def test_metric_path_points_at_the_shipped_module_files():
    package_dir = Path(zoo_metrics.__file__).resolve().parent
    assert zoo_metrics.METRIC_NAMES == ("accuracy", "f1", "wer", "cer")
    for name in zoo_metrics.METRIC_NAMES:
        path = zoo_metrics.metric_path(name)
        assert os.path.isabs(path)
        assert Path(path) == package_dir / f"{name}.py"
        assert Path(path).is_file()


@pytest.mark.parametrize("call", ["metric_path", "load_metric", "load_metrics"])
def test_unknown_metric_name_is_a_value_error_naming_the_valid_ones(call):
    function = getattr(zoo_metrics, call)
    with pytest.raises(ValueError) as info:
        function("bleu") if call != "load_metrics" else function("accuracy", "bleu")
    for name in ("bleu", *zoo_metrics.METRIC_NAMES):
        assert name in str(info.value)


def test_load_metrics_needs_a_name():
    with pytest.raises(ValueError, match="at least one"):
        zoo_metrics.load_metrics()


def test_missing_evaluate_is_an_import_error_saying_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "evaluate", None)  # `import evaluate` now raises ImportError
    for call in (lambda: zoo_metrics.load_metric("wer"), lambda: zoo_metrics.load_metrics("accuracy", "f1")):
        with pytest.raises(ImportError, match="pip install evaluate"):
            call()
    # Name checks still come first: an unknown name is a ValueError even without evaluate.
    with pytest.raises(ValueError):
        zoo_metrics.load_metrics("accuracy", "bleu")


@pytest.mark.parametrize("name", ["accuracy", "f1", "wer", "cer"])
def test_module_files_are_self_contained_for_evaluate(name):
    """evaluate copies the file alone into its modules cache and reads its imports line by line: only top-level
    library imports it can check (no relative imports, which it would try to fetch next to the file)."""
    from evaluate.loading import get_imports

    imports = get_imports(zoo_metrics.metric_path(name))
    assert imports, "evaluate found no import lines at all"
    assert {kind for kind, *_ in imports} == {"library"}, imports
    assert {module for _, module, *_ in imports} <= {"datasets", "evaluate", "numpy", "jiwer"}, imports
    text = Path(zoo_metrics.metric_path(name)).read_text()
    assert text.startswith("# Copyright 2026 The mamba-zoo authors. Apache-2.0.\n")
    assert "sklearn" not in {module for _, module, *_ in imports}


def test_loaded_modules_describe_themselves(classification, text_metrics):
    for name, module in {**classification, **text_metrics}.items():
        assert module.name == name
        assert len(module.description) > 100 and "@" in module.citation and "Args:" in module.inputs_description
        dtype = "int64" if name in ("accuracy", "f1") else "string"
        assert {key: feature.dtype for key, feature in module.features.items()} == {
            "predictions": dtype,
            "references": dtype,
        }


# ---------------------------------------------------------------------------------------------------------------------
# accuracy


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_matches_plain_python(classification, seed):
    rng = random.Random(seed)
    n, classes = rng.randint(5, 60), rng.randint(2, 6)
    references = [rng.randrange(classes) for _ in range(n)]
    predictions = [r if rng.random() < 0.5 else rng.randrange(classes) for r in references]
    weights = [rng.uniform(0.1, 3.0) for _ in range(n)]
    accuracy = classification["accuracy"]

    result = accuracy.compute(predictions=predictions, references=references)
    assert set(result) == {"accuracy"} and isinstance(result["accuracy"], float)
    assert result["accuracy"] == pytest.approx(plain_accuracy(predictions, references))
    result = accuracy.compute(predictions=predictions, references=references, normalize=False)
    assert result["accuracy"] == sum(p == r for p, r in zip(predictions, references))
    result = accuracy.compute(predictions=predictions, references=references, sample_weight=weights)
    assert result["accuracy"] == pytest.approx(plain_accuracy(predictions, references, weights))
    result = accuracy.compute(predictions=predictions, references=references, sample_weight=weights, normalize=False)
    assert result["accuracy"] == pytest.approx(plain_accuracy(predictions, references, weights, normalize=False))


def test_accuracy_extremes(classification):
    accuracy = classification["accuracy"]
    assert accuracy.compute(predictions=[3, 1, 4], references=[3, 1, 4]) == {"accuracy": 1.0}
    assert accuracy.compute(predictions=[0, 0, 0], references=[1, 2, 3]) == {"accuracy": 0.0}
    assert accuracy.compute(predictions=np.array([1, 2, 9]), references=np.array([1, 2, 3])) == {"accuracy": 2 / 3}


# ---------------------------------------------------------------------------------------------------------------------
# f1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["micro", "macro", "weighted", None])
def test_f1_multiclass_matches_plain_python(classification, seed, average):
    rng = random.Random(seed)
    n, classes = rng.randint(5, 60), rng.randint(3, 7)
    values = rng.sample(range(40), classes)  # sparse, unordered label ids: only labels that occur are scored
    references = [rng.choice(values) for _ in range(n)]
    predictions = [r if rng.random() < 0.4 else rng.choice(values) for r in references]
    f1 = classification["f1"]

    for weights in (None, [rng.uniform(0.1, 3.0) for _ in range(n)]):
        result = f1.compute(predictions=predictions, references=references, average=average, sample_weight=weights)
        expected = plain_f1(predictions, references, average, weights=weights)
        assert set(result) == {"f1"}
        if average is None:
            assert isinstance(result["f1"], np.ndarray)
            assert result["f1"].shape == (len(set(predictions) | set(references)),)
            np.testing.assert_allclose(result["f1"], expected)
        else:
            assert isinstance(result["f1"], float)
            assert result["f1"] == pytest.approx(expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_with_explicit_labels_including_an_absent_one(classification, seed):
    rng = random.Random(seed)
    n = rng.randint(10, 40)
    references = [rng.randrange(4) for _ in range(n)]
    predictions = [rng.randrange(4) for _ in range(n)]
    labels = [2, 0, 9]  # a subset, out of order, and a label with no true or predicted example (scores 0)
    f1 = classification["f1"]
    for average in ("micro", "macro", "weighted"):
        result = f1.compute(predictions=predictions, references=references, labels=labels, average=average)
        assert result["f1"] == pytest.approx(plain_f1(predictions, references, average, labels=labels))
    per_label = f1.compute(predictions=predictions, references=references, labels=labels, average=None)["f1"]
    np.testing.assert_allclose(per_label, plain_f1(predictions, references, None, labels=labels))
    assert per_label[2] == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_f1_binary_matches_plain_python(classification, seed):
    rng = random.Random(seed)
    n = rng.randint(5, 60)
    references = [rng.randrange(2) for _ in range(n)]
    predictions = [r if rng.random() < 0.6 else 1 - r for r in references]
    weights = [rng.uniform(0.1, 3.0) for _ in range(n)]
    f1 = classification["f1"]
    for pos_label in (1, 0):
        for w in (None, weights):
            result = f1.compute(predictions=predictions, references=references, pos_label=pos_label, sample_weight=w)
            assert isinstance(result["f1"], float)
            expected = plain_f1(predictions, references, "binary", pos_label=pos_label, weights=w)
            assert result["f1"] == pytest.approx(expected)
    # Two labels other than 0 / 1 are binary too, once pos_label names one of them.
    shifted_refs, shifted_preds = [3 + 4 * r for r in references], [3 + 4 * p for p in predictions]
    result = f1.compute(predictions=shifted_preds, references=shifted_refs, pos_label=7)
    assert result["f1"] == pytest.approx(plain_f1(predictions, references, "binary", pos_label=1))


def test_f1_binary_rules(classification):
    f1 = classification["f1"]
    with pytest.raises(ValueError, match="average"):
        f1.compute(predictions=[0, 1, 2], references=[0, 1, 1])  # three labels, average="binary"
    with pytest.raises(ValueError, match="pos_label"):
        f1.compute(predictions=[3, 7, 7], references=[3, 3, 7])  # pos_label=1 is neither label
    # No positive example anywhere: 0, not an error (sklearn's zero_division default).
    assert f1.compute(predictions=[0, 0, 0], references=[0, 0, 0]) == {"f1": 0.0}
    # average=None with a single scored label is a bare float, as the Hub metric returns.
    result = f1.compute(predictions=[0, 1, 2], references=[0, 1, 1], labels=[1], average=None)
    assert isinstance(result["f1"], float) and result["f1"] == pytest.approx(2 / 3)  # TP 1, FN 1
    with pytest.raises(ValueError, match="average"):
        f1.compute(predictions=[0, 1], references=[0, 1], average="samples")


def test_f1_accumulates_batches_like_one_call(classification):
    rng = random.Random(7)
    references = [rng.randrange(5) for _ in range(50)]
    predictions = [r if rng.random() < 0.5 else rng.randrange(5) for r in references]
    f1 = classification["f1"]
    for start in range(0, 50, 16):
        f1.add_batch(predictions=predictions[start : start + 16], references=references[start : start + 16])
    assert f1.compute(average="macro")["f1"] == pytest.approx(plain_f1(predictions, references, "macro"))


# ---------------------------------------------------------------------------------------------------------------------
# wer / cer


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("messy", [False, True], ids=["clean", "extra-spaces"])
def test_wer_matches_plain_levenshtein_over_words(text_metrics, seed, messy):
    predictions, references = random_transcripts(random.Random(seed), random.Random(seed).randint(1, 25), messy)
    expected = plain_wer(predictions, references)
    for concatenate_texts in (False, True):
        result = text_metrics["wer"].compute(
            predictions=predictions, references=references, concatenate_texts=concatenate_texts
        )
        assert isinstance(result, float)
        assert result == pytest.approx(expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("messy", [False, True], ids=["clean", "extra-spaces"])
def test_cer_matches_plain_levenshtein_over_characters(text_metrics, seed, messy):
    predictions, references = random_transcripts(random.Random(seed), random.Random(seed).randint(1, 25), messy)
    cer = text_metrics["cer"]
    result = cer.compute(predictions=predictions, references=references)
    assert isinstance(result, float)
    assert result == pytest.approx(plain_cer(predictions, references))
    result = cer.compute(predictions=predictions, references=references, concatenate_texts=True)
    assert isinstance(result, float)
    assert result == pytest.approx(plain_cer_concatenated(predictions, references))


def test_wer_and_cer_small_cases(text_metrics):
    wer, cer = text_metrics["wer"], text_metrics["cer"]
    assert wer.compute(predictions=["the cat sat"], references=["the cat sat"]) == 0.0
    assert wer.compute(predictions=["the cat sat down"], references=["the cat sat"]) == pytest.approx(1 / 3)
    assert wer.compute(predictions=["a b c d e f"], references=["x"]) == 6.0  # WER is not capped at 1
    assert cer.compute(predictions=["helo"], references=["hello"]) == pytest.approx(1 / 5)
    # Per pair, "ab" -> "ba" costs 2, twice, over 4 reference characters; concatenated, "abba" -> "baab" is aligned
    # as one string (levenshtein 2: drop the first "a", append one).
    assert cer.compute(predictions=["ba", "ab"], references=["ab", "ba"]) == pytest.approx(4 / 4)
    assert cer.compute(predictions=["ba", "ab"], references=["ab", "ba"], concatenate_texts=True) == pytest.approx(
        levenshtein("abba", "baab") / 4
    )


def test_wer_accumulates_batches_like_one_call(text_metrics):
    predictions, references = random_transcripts(random.Random(5), 30)
    wer = text_metrics["wer"]
    for start in range(0, 30, 8):
        wer.add_batch(predictions=predictions[start : start + 8], references=references[start : start + 8])
    assert wer.compute() == pytest.approx(plain_wer(predictions, references))


# ---------------------------------------------------------------------------------------------------------------------
# evaluate.combine


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_load_metrics_combines_accuracy_and_f1(seed):
    rng = random.Random(seed)
    references = [rng.randrange(2) for _ in range(rng.randint(5, 40))]
    predictions = [r if rng.random() < 0.7 else 1 - r for r in references]
    combined = zoo_metrics.load_metrics("accuracy", "f1")
    assert isinstance(combined, evaluate.CombinedEvaluations)
    result = combined.compute(predictions=predictions, references=references)
    assert set(result) == {"accuracy", "f1"}
    assert result["accuracy"] == pytest.approx(plain_accuracy(predictions, references))
    assert result["f1"] == pytest.approx(plain_f1(predictions, references, "binary"))


# ---------------------------------------------------------------------------------------------------------------------
# Offline, in a fresh process


_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import mamba_zoo.metrics as zoo_metrics
    report = {"imported_on_import": sorted(m for m in ("evaluate", "datasets", "jiwer") if m in sys.modules)}
    report["accuracy"] = zoo_metrics.load_metric("accuracy").compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2])
    report["f1"] = zoo_metrics.load_metric("f1").compute(
        predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], average="macro"
    )
    report["wer"] = zoo_metrics.load_metric("wer").compute(predictions=["a b c"], references=["a x c d"])
    report["cer"] = zoo_metrics.load_metric("cer").compute(predictions=["abd"], references=["abcd"])
    report["combined"] = zoo_metrics.load_metrics("accuracy", "f1").compute(predictions=[1, 0], references=[1, 1])
    import evaluate
    report["modules_cache"] = str(evaluate.config.HF_MODULES_CACHE)
    try:
        evaluate.load("accuracy")  # the Hub's metric: must not be reachable here
        report["hub_accuracy_loaded"] = True
    except Exception as error:
        report["hub_accuracy_loaded"] = False
        report["hub_error"] = type(error).__name__
    print("REPORT" + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    pytest.importorskip("jiwer")
    hf_home = tmp_path_factory.mktemp("offline") / "hf_home"
    hf_home.mkdir()
    env = {k: v for k, v in os.environ.items() if not (k.startswith("HF_") or k == "XDG_CACHE_HOME")}
    env.update(
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",  # nothing listens there: any Hub request fails at once
        PYTHONPATH=os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH")] if p),
    )
    completed = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT], env=env, cwd=str(hf_home), capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    lines = [line for line in completed.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, completed.stdout[-2000:] + completed.stderr[-2000:]
    return hf_home, json.loads(lines[-1][len("REPORT") :])


def test_metrics_load_offline_with_an_empty_hf_home(offline_run):
    hf_home, report = offline_run
    assert report["hub_accuracy_loaded"] is False, "the subprocess could reach the Hub: the check proves nothing"
    assert report["accuracy"] == {"accuracy": 0.75}
    # per class f1: class 0: 1.0; class 1: 2*1/(2+1); class 2: 2*1/(1+2)
    assert report["f1"]["f1"] == pytest.approx((1.0 + 2 / 3 + 2 / 3) / 3)
    assert report["wer"] == pytest.approx(levenshtein(["a", "x", "c", "d"], ["a", "b", "c"]) / 4)
    assert report["cer"] == pytest.approx(1 / 4)
    assert report["combined"] == pytest.approx({"accuracy": 0.5, "f1": 2 / 3})
    # evaluate copied each module file into the temporary HF_HOME's modules cache and imported it from there.
    assert Path(report["modules_cache"]) == hf_home / "modules"
    for name in zoo_metrics.METRIC_NAMES:
        copies = list((hf_home / "modules" / "evaluate_modules" / "metrics" / name).glob(f"*/{name}.py"))
        assert len(copies) == 1
        assert copies[0].read_text() == Path(zoo_metrics.metric_path(name)).read_text()


def test_importing_the_subpackage_imports_neither_evaluate_nor_datasets(offline_run):
    assert offline_run[1]["imported_on_import"] == []
