"""Keyword search in long recordings: event extraction from per-column probabilities, smoothing, scoring, and
find_keywords end to end on a tiny frame classifier."""

import numpy as np
import pytest
import torch

from mamba_zoo import SSAMBAConfig, SSAMBAFeatureExtractor, SSAMBAForAudioFrameClassification
from mamba_zoo import keyword_search
from mamba_zoo.keyword_search import (
    DEFAULT_DETECTION,
    detection_settings,
    events_from_probabilities,
    find_keywords,
    match_events,
    match_recordings,
    smooth,
)

LABELS = ["_silence_", "_unknown_", "yes", "no"]


def _times(n, step=0.04, width=0.04):
    starts = np.arange(n) * step
    return np.stack([starts, starts + width], axis=1)


def _probabilities(n, runs):
    """Background everywhere, label c with probability p on columns [a, b) for each (c, a, b, p)."""
    probs = np.zeros((n, len(LABELS)))
    probs[:, 0] = 1.0
    for c, a, b, p in runs:
        probs[a:b] = (1 - p) / (len(LABELS) - 1)
        probs[a:b, c] = p
    return probs


def test_events_are_runs_above_threshold_merged_and_filtered():
    probs = _probabilities(100, [(2, 10, 20, 0.9), (2, 22, 25, 0.8),  # two runs 0.08 s apart: merged
                                 (3, 50, 52, 0.95),                    # 0.08 s long: shorter than min_duration
                                 (3, 70, 80, 0.4),                     # below threshold
                                 (1, 85, 95, 0.99)])                   # a background label: never reported
    events = events_from_probabilities(probs, _times(100), LABELS, threshold=0.5, min_duration=0.1, merge_gap=0.1)
    assert len(events) == 1
    event = events[0]
    assert event["label"] == "yes" and event["start"] == pytest.approx(0.40) and event["end"] == pytest.approx(1.00)
    assert event["score"] == pytest.approx(0.9)
    assert len(events_from_probabilities(probs, _times(100), LABELS, merge_gap=0.0)) == 2
    assert [e["label"] for e in events_from_probabilities(probs, _times(100), LABELS, threshold=0.3,
                                                          min_duration=0.0, merge_gap=0.0)] == ["yes", "yes", "no",
                                                                                                 "no"]


def test_smoothing_is_a_centred_moving_average():
    probs = np.random.default_rng(0).random((30, 3))
    smoothed = smooth(probs, 5)
    assert smoothed.shape == probs.shape
    np.testing.assert_allclose(smoothed[10], probs[8:13].mean(0))
    np.testing.assert_allclose(smoothed[0], (3 * probs[0] + probs[1] + probs[2]) / 5)  # edge-padded
    np.testing.assert_array_equal(smooth(probs, 1), probs)


def test_match_events_counts_each_reference_once():
    reference = [{"label": "yes", "start": 1.0, "end": 2.0}, {"label": "no", "start": 5.0, "end": 6.0}]
    predicted = [{"label": "yes", "start": 1.2, "end": 1.6, "score": 0.9},
                 {"label": "yes", "start": 1.3, "end": 1.7, "score": 0.8},   # a duplicate: a false positive
                 {"label": "yes", "start": 5.1, "end": 5.5, "score": 0.9},   # wrong label at the right time
                 {"label": "no", "start": 6.1, "end": 6.3, "score": 0.7}]    # centre 6.2: within 0.25 s
    scores = match_events(predicted, reference, tolerance=0.25)
    assert scores["true_positives"] == 2 and scores["precision"] == 0.5 and scores["recall"] == 1.0
    assert scores["f1"] == pytest.approx(2 / 3)
    assert match_events([], [])["f1"] == 1.0  # nothing to find, nothing found
    assert match_events([], reference)["recall"] == 0.0 and match_events([], reference)["f1"] == 0.0


def test_match_recordings_pools_counts_and_never_crosses_recordings():
    """Several recordings: each prediction is matched within its own recording only; counts add up."""
    first = ([{"label": "yes", "start": 1.2, "end": 1.6}], [{"label": "yes", "start": 1.0, "end": 2.0}])
    # the prediction of recording 2 sits where recording 1's reference is: no match across recordings
    second = ([{"label": "yes", "start": 1.2, "end": 1.6}], [{"label": "no", "start": 1.0, "end": 2.0}])
    scores = match_recordings([first[0], second[0]], [first[1], second[1]])
    assert (scores["true_positives"], scores["predicted"], scores["reference"]) == (1, 2, 2)
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5
    assert match_recordings([first[0]], [first[1]]) == match_events(*first)
    with pytest.raises(ValueError):
        match_recordings([first[0]], [first[1], second[1]])


def test_smoothing_before_events_matches_smoothing_by_hand():
    probs = _probabilities(100, [(2, 10, 30, 0.6), (3, 31, 33, 0.99)])
    by_hand = events_from_probabilities(smooth(probs, 5), _times(100), LABELS)
    assert events_from_probabilities(probs, _times(100), LABELS, smoothing_seconds=0.2) == by_hand


def test_find_keywords_reads_a_long_recording_whole():
    """A tiny frame classifier without position embeddings runs over a 40 s recording in one pass (more columns than
    its max_length holds), and its events come from frame_probabilities' columns."""
    torch.manual_seed(0)
    config = SSAMBAConfig(hidden_size=32, num_hidden_layers=2, num_mel_bins=128, max_length=100,
                          patch_size=(128, 4), frequency_stride=128, time_stride=4, use_position_embeddings=False,
                          drop_path_rate=0.0, num_labels=4, id2label=dict(enumerate(LABELS)),
                          label2id={label: i for i, label in enumerate(LABELS)})
    model = SSAMBAForAudioFrameClassification(config).eval()
    with torch.no_grad():  # make "yes" win wherever the input is loud: a detector with a known answer
        model.classifier.dense.weight.zero_()
        model.classifier.dense.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    extractor = SSAMBAFeatureExtractor(max_length=100)
    audio = (0.01 * np.random.default_rng(1).standard_normal(16000 * 40)).astype(np.float32)
    events = find_keywords(audio, model, extractor, sampling_rate=16000)
    assert events == []  # background wins everywhere
    with torch.no_grad():
        model.classifier.dense.bias.copy_(torch.tensor([0.0, 0.0, 3.0, 0.0]))
    events = find_keywords(audio, model, extractor, sampling_rate=16000)
    assert len(events) == 1 and events[0]["label"] == "yes"
    assert events[0]["start"] == 0.0 and events[0]["end"] == pytest.approx(40.0, abs=0.1)
    with pytest.raises(ValueError, match="sampling"):
        find_keywords(audio, model, extractor, sampling_rate=8000)


def _config_model(**extra):
    config = SSAMBAConfig(hidden_size=32, num_hidden_layers=2, num_labels=4, id2label=dict(enumerate(LABELS)),
                          label2id={label: i for i, label in enumerate(LABELS)})
    for name, value in extra.items():
        setattr(config, name, value)
    return SSAMBAForAudioFrameClassification(config)


def test_detection_settings_come_from_arguments_then_checkpoint_then_defaults(tmp_path):
    """Arguments win over the checkpoint's saved `config.keyword_search` (which survives save/load), which wins over
    DEFAULT_DETECTION; bad saved values are a clear error."""
    plain = _config_model()
    assert detection_settings(plain) == DEFAULT_DETECTION
    tuned = _config_model(keyword_search={"threshold": 0.7, "min_duration": 0.3})
    tuned.save_pretrained(tmp_path)
    loaded = SSAMBAForAudioFrameClassification.from_pretrained(tmp_path)
    assert detection_settings(loaded) == {"threshold": 0.7, "min_duration": 0.3}
    assert detection_settings(loaded, threshold=0.4) == {"threshold": 0.4, "min_duration": 0.3}
    assert detection_settings(loaded, min_duration=0.0) == {"threshold": 0.7, "min_duration": 0.0}
    with pytest.raises(ValueError, match="threshold"):
        detection_settings(_config_model(keyword_search={"threshold": 1.5}))
    with pytest.raises(ValueError, match="keyword_search must be a dict"):
        detection_settings(_config_model(keyword_search=0.5))


def test_find_keywords_uses_the_checkpoints_detection_settings(monkeypatch):
    """A run at probability 0.6 lasting 0.2 s: found with the defaults (0.5, 0.1 s), dropped by a checkpoint that saved
    threshold 0.7 or min_duration 0.3 s, found again when the call overrides the saved threshold."""
    probs = _probabilities(100, [(2, 40, 45, 0.6)])
    monkeypatch.setattr(keyword_search, "frame_probabilities", lambda *a, **k: (probs, _times(100)))
    audio = np.zeros(16000, dtype=np.float32)
    kwargs = dict(smoothing_seconds=0.0)
    assert [e["label"] for e in find_keywords(audio, _config_model(), None, **kwargs)] == ["yes"]
    strict = _config_model(keyword_search={"threshold": 0.7, "min_duration": 0.1})
    assert find_keywords(audio, strict, None, **kwargs) == []
    assert len(find_keywords(audio, strict, None, threshold=0.5, **kwargs)) == 1
    assert find_keywords(audio, _config_model(keyword_search={"min_duration": 0.3}), None, **kwargs) == []
