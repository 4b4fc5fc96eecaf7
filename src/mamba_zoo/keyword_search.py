# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""Keyword search and event detection in long recordings with a frame classifier
(`SSAMBAForAudioFrameClassification`): where in a 10-minute (or 2-hour) recording was "stop" said?

`find_keywords(audio, model, feature_extractor)` featurises the whole recording (a block of frames at a time), runs
the model over it in one pass (the mixers walk long sequences chunk by chunk with carried state, so memory stays
bounded; a model built with `use_position_embeddings=False` reads any length as it was trained), smooths the
per-column class probabilities over a short window and returns one event per run of columns where a keyword's
probability stays above `threshold`: `{"label", "start", "end", "score"}` with times in seconds. A checkpoint can
carry its own detection settings (`config.keyword_search = {"threshold": ..., "min_duration": ...}`, which
`training/train_keyword_search.py` tunes on validation scenes); `detection_settings(model)` reads them.

`match_events(predicted, reference, tolerance)` scores detections against reference events (a prediction is a hit
when its label matches and its centre lies within `tolerance` seconds of a reference's span; each reference is
matched at most once), for precision / recall / F1.
"""

from __future__ import annotations

import copy
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from .audio_utils import validate_audio

BACKGROUND_LABELS = ("_silence_", "_unknown_")
SMOOTHING_SECONDS = 0.2  # find_keywords' moving average over the per-column probabilities
# find_keywords' settings for a checkpoint that saves none of its own
DEFAULT_DETECTION = {"threshold": 0.5, "min_duration": 0.1}


def detection_settings(model, threshold: Optional[float] = None, min_duration: Optional[float] = None) -> dict:
    """`{"threshold", "min_duration"}` for `model`: the arguments given, else the checkpoint's own
    (`model.config.keyword_search`, tuned on validation scenes by the training recipe), else `DEFAULT_DETECTION`.
    Raises a `ValueError` naming the key for a saved setting that is not a number in range."""
    saved = getattr(model.config, "keyword_search", None) or {}
    if not isinstance(saved, dict):
        raise ValueError(f"config.keyword_search must be a dict like {DEFAULT_DETECTION}, got {saved!r}.")
    settings = {**DEFAULT_DETECTION, **{k: v for k, v in saved.items() if k in DEFAULT_DETECTION}}
    for name, value in (("threshold", threshold), ("min_duration", min_duration)):
        if value is not None:
            settings[name] = value
        settings[name] = float(settings[name])
    if not 0.0 <= settings["threshold"] < 1.0 or settings["min_duration"] < 0.0:
        raise ValueError(f"keyword search needs 0 <= threshold < 1 and min_duration >= 0 (seconds), got {settings} "
                         "(from the arguments or config.keyword_search).")
    return settings


@torch.no_grad()
def frame_probabilities(audio: np.ndarray, model, feature_extractor, sampling_rate: Optional[int] = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities per output column `(T, num_labels)` and each column's `(start, end)` in seconds `(T, 2)`
    for one recording (1-D float audio at the feature extractor's rate)."""
    clip = validate_audio(audio, sampling_rate, feature_extractor.sampling_rate, owner="find_keywords", copy=False)[0]
    whole = copy.copy(feature_extractor)  # the recording's own length: nothing padded or cut
    whole.max_length = max(whole.num_frames(clip.size), model.config.time_patch_size)
    values = torch.from_numpy(whole.features_of_validated([clip]))  # no second copy of a long recording
    del clip
    model.eval()
    interpolate = bool(getattr(model.config, "use_position_embeddings", True))
    logits = model(values.to(model.dtype), interpolate_pos_encoding=interpolate).logits[0]
    probabilities = torch.softmax(logits.float(), dim=-1).numpy()
    times = model.column_times(probabilities.shape[0], hop_seconds=feature_extractor.frame_seconds).numpy()
    return probabilities, times


def smooth(probabilities: np.ndarray, window: int) -> np.ndarray:
    """Moving average of `(T, C)` probabilities over `window` columns (centred; shorter at the ends)."""
    if window <= 1:
        return probabilities
    kernel = np.ones(window) / window
    padded = np.pad(probabilities, ((window // 2, window - 1 - window // 2), (0, 0)), mode="edge")
    return np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(probabilities.shape[1])], axis=1)


def events_from_probabilities(probabilities: np.ndarray, times: np.ndarray, labels: Sequence[str],
                              threshold: float = 0.5, min_duration: float = 0.1, merge_gap: float = 0.2,
                              ignore: Iterable[str] = BACKGROUND_LABELS, smoothing_seconds: float = 0.0) -> list[dict]:
    """Runs of columns where a label's probability (after a `smoothing_seconds` moving average) is above `threshold`
    and is the column's top label -> events `{"label", "start", "end", "score"}` (score: the run's peak probability),
    runs of one label closer than `merge_gap` seconds merged, events shorter than `min_duration` dropped, sorted by
    start."""
    step = float(times[1, 0] - times[0, 0]) if len(times) > 1 else 1.0
    probabilities = smooth(probabilities, max(1, int(round(smoothing_seconds / step))))
    ignore = set(ignore)
    top = probabilities.argmax(axis=1)
    events = []
    for c, label in enumerate(labels):
        if label in ignore:
            continue
        active = (top == c) & (probabilities[:, c] > threshold)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
        runs = []
        for start, stop in zip(edges[::2], edges[1::2]):  # columns [start, stop)
            if runs and times[start, 0] - runs[-1][2] <= merge_gap:
                runs[-1] = (runs[-1][0], stop, times[stop - 1, 1])
            else:
                runs.append((start, stop, times[stop - 1, 1]))
        for start, stop, end_time in runs:
            if end_time - times[start, 0] >= min_duration:
                events.append({"label": label, "start": float(times[start, 0]), "end": float(end_time),
                               "score": float(probabilities[start:stop, c].max())})
    return sorted(events, key=lambda e: e["start"])


def find_keywords(audio: np.ndarray, model, feature_extractor, sampling_rate: Optional[int] = None,
                  threshold: Optional[float] = None, smoothing_seconds: float = SMOOTHING_SECONDS,
                  min_duration: Optional[float] = None, merge_gap: float = 0.2,
                  ignore: Iterable[str] = BACKGROUND_LABELS) -> list[dict]:
    """Keyword (or event) occurrences in one recording of any length: a list of `{"label", "start", "end",
    "score"}` (seconds), sorted by start. Labels in `ignore` (background classes) are never reported.

    Args:
        audio: 1-D float audio (a long recording), at `sampling_rate` (must be the feature extractor's).
        model: an `SSAMBAForAudioFrameClassification`. feature_extractor: its `SSAMBAFeatureExtractor` (its
            `max_length` is ignored: the whole recording is featurised).
        threshold: minimum smoothed probability of the event's label (which must also be the top label); default:
            the checkpoint's own (`detection_settings`), else 0.5.
        smoothing_seconds: moving-average window over the per-column probabilities.
        min_duration / merge_gap: drop shorter events (default: the checkpoint's own, else 0.1 s); merge runs of
            one label closer than this (seconds).
    """
    settings = detection_settings(model, threshold, min_duration)
    probabilities, times = frame_probabilities(audio, model, feature_extractor, sampling_rate)
    labels = [model.config.id2label[i] for i in range(probabilities.shape[1])]
    return events_from_probabilities(probabilities, times, labels, settings["threshold"], settings["min_duration"],
                                     merge_gap, ignore, smoothing_seconds)


def match_events(predicted: Sequence[dict], reference: Sequence[dict], tolerance: float = 0.25) -> dict:
    """Precision, recall and F1 of `predicted` events against `reference` events (dicts with label, start, end): a
    prediction is a true positive when an unmatched reference of the same label has its span within `tolerance`
    seconds of the prediction's centre."""
    return match_recordings([predicted], [reference], tolerance)


def match_recordings(predicted: Sequence[Sequence[dict]], reference: Sequence[Sequence[dict]],
                     tolerance: float = 0.25) -> dict:
    """`match_events` pooled over several recordings: `predicted[i]` is matched against `reference[i]` only, and
    the counts add up."""
    hits = sum(_true_positives(p, r, tolerance) for p, r in zip(predicted, reference, strict=True))
    num_predicted, num_reference = sum(map(len, predicted)), sum(map(len, reference))
    precision = hits / num_predicted if num_predicted else (1.0 if not num_reference else 0.0)
    recall = hits / num_reference if num_reference else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_positives": hits,
            "predicted": num_predicted, "reference": num_reference}


def _true_positives(predicted: Sequence[dict], reference: Sequence[dict], tolerance: float) -> int:
    """Predictions (highest score first) that each claim one unmatched reference of their label near their centre."""
    used = [False] * len(reference)
    hits = 0
    for event in sorted(predicted, key=lambda e: -e.get("score", 0.0)):
        centre = (event["start"] + event["end"]) / 2
        for i, ref in enumerate(reference):
            if not used[i] and ref["label"] == event["label"] and \
                    ref["start"] - tolerance <= centre <= ref["end"] + tolerance:
                used[i] = True
                hits += 1
                break
    return hits


__all__ = ["DEFAULT_DETECTION", "detection_settings", "find_keywords", "frame_probabilities", "smooth", "events_from_probabilities", "match_events",
           "match_recordings"]
