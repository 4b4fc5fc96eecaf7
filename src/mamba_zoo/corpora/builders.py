"""Builders that turn synthesized speech (espeak-ng, Festival, SAM, Pico) into ``datasets.DatasetDict`` objects, cached on
disk.

Every builder works in two steps. First it draws a list of :class:`ClipSpec` (what to say, with which
voice, rate, pitch, noise, room...) from one ``numpy`` generator seeded with ``seed``; then it renders
the clips, in worker processes when ``num_workers > 0``. A clip is a pure function of its spec
(:func:`render_clip`; espeak-ng is reloaded for every utterance, see :mod:`mamba_zoo.corpora.synth`; Festival and
SAM and Pico are deterministic), so a corpus is the same bytes whatever the number of workers.

**Engines.** ``engines=`` picks the training engines (:mod:`.engines`); an engine with at least 6 voices is split by
voice like espeak-ng's variants, one with fewer (Festival's 3) goes to train only. Clips draw an engine first (equal
shares), then one of its voices. ``heldout_engines=`` adds a fourth split, ``heldout_engine``, spoken by every voice
of engines that are in no other split: the number that says whether a model heard speech or one synthesizer.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .augment import (
    add_noise,
    apply_reverb,
    background_noise,
    fit_to_length,
    resample,
    rms,
    room_impulse_response,
    scale_to_peak_dbfs,
    trim_silence,
)
from .engines import check_engine_names, check_engines, engine_of, engine_voice, engine_voices
from .synth import SynthResult, Voice, espeak_version, list_voices, parse_voice, synthesize, variant_base_pitch
from .vocabulary import COMMANDS, DIGITS, NUMBER_WORDS, UNKNOWN_WORDS, digit_string, fact_book, make_fact, make_sentence

__all__ = [
    "CORPUS_VERSION",
    "SHARD_SIZE",
    "SILENCE_LABEL",
    "SPLITS",
    "UNKNOWN_LABEL",
    "HELDOUT_SPLIT",
    "ClipSpec",
    "corpus_voices",
    "default_cache_dir",
    "load_keywords",
    "load_speakers",
    "load_text_corpus",
    "load_transcribed",
    "load_unlabeled_audio",
    "render_clip",
    "split_voices",
]

CORPUS_VERSION = "1"  # bump when rendering changes, so stale caches are not reused
SPLITS = ("train", "validation", "test")
HELDOUT_SPLIT = "heldout_engine"  # present when a corpus is built with heldout_engines
SILENCE_LABEL = "_silence_"
UNKNOWN_LABEL = "_unknown_"
SHARD_SIZE = 32  # clips per task sent to a worker (does not change the output)
# espeak volume used for every utterance: low enough that no voice clips; levels are set afterwards.
ESPEAK_VOLUME = 20


def default_cache_dir() -> Path:
    """``$MAMBA_ZOO_CACHE``, else ``$XDG_CACHE_HOME/mamba_zoo/corpora``, else ``~/.cache/mamba_zoo/corpora``."""
    if os.environ.get("MAMBA_ZOO_CACHE"):
        return Path(os.environ["MAMBA_ZOO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mamba_zoo" / "corpora"


# --------------------------------------------------------------------------------------------------
# One clip
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines one clip. ``text=None`` makes a background-noise clip (``_silence_``).

    Attributes:
        text: words to speak (lowercase, no punctuation), or None for noise only.
        voice: espeak voice ``"accent+variant"``, or ``"festival:<voice>"`` / ``"sam:<voice>"`` / ``"pico:<voice>"``
            (:mod:`.engines`).
        punctuation: appended when speaking ("." / "!" / "?" change the intonation).
        rate, pitch, pitch_range: espeak-scale parameters (words per minute, 0..100, 0..100); Festival, SAM and Pico map
            rate and pitch onto their own controls and ignore pitch_range.
        seed: seeds espeak's noise generator and the augmentation generator.
        sampling_rate: output rate in Hz.
        length: fixed length in samples, or None for the natural length plus padding.
        time_shift: place the speech at a random offset (else centred / fixed padding).
        peak_dbfs: peak level of the speech.
        snr_db: signal-to-noise ratio of added background noise, or None for none.
        rt60: reverberation time of a synthetic room in seconds, or None for a dry clip.
        noise_dbfs: RMS level of a noise-only clip.
    """

    text: str | None
    voice: str | None
    seed: int
    sampling_rate: int
    punctuation: str = "."
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    length: int | None = None
    time_shift: bool = True
    peak_dbfs: float = -3.0
    snr_db: float | None = None
    rt60: float | None = None
    noise_dbfs: float = -40.0


@dataclass
class RenderedClip:
    """Float32 audio in [-1, 1] and the onset of each spoken word in seconds."""

    audio: np.ndarray
    word_starts: list[float] = field(default_factory=list)


def _speak(specs: list[ClipSpec]) -> list[SynthResult | None]:
    """The raw speech of every spec (``None`` for noise-only clips): espeak-ng one utterance at a time, Festival and
    SAM in one process per engine for the whole list, Pico in this process."""
    from .festival import FestivalRequest, synthesize_festival
    from .pico import PicoRequest, synthesize_pico
    from .sam import SamRequest, synthesize_sam

    spoken: list[SynthResult | None] = [None] * len(specs)
    batches: dict[str, list[int]] = {"festival": [], "sam": [], "pico": []}
    for i, spec in enumerate(specs):
        if spec.text is None:
            continue
        engine = engine_of(spec.voice)
        if engine == "espeak-ng":
            spoken[i] = synthesize(
                spec.text + spec.punctuation, spec.voice, rate=spec.rate, pitch=spec.pitch,
                pitch_range=spec.pitch_range, volume=ESPEAK_VOLUME, seed=spec.seed,
            )
        else:
            batches[engine].append(i)
    for engine, request_class, run in (("festival", FestivalRequest, synthesize_festival),
                                       ("sam", SamRequest, synthesize_sam),
                                       ("pico", PicoRequest, synthesize_pico)):
        indices = batches[engine]
        requests = [request_class(specs[i].text + specs[i].punctuation, engine_voice(specs[i].voice),
                                  specs[i].rate, specs[i].pitch) for i in indices]
        for i, result in zip(indices, run(requests)):
            spoken[i] = result
    return spoken


def render_clip(spec: ClipSpec, spoken: SynthResult | None = None) -> RenderedClip:
    """Synthesize and augment one clip; a pure function of ``spec`` (``spoken``: its speech, if already
    synthesized)."""
    rng = np.random.default_rng(spec.seed)
    sr = spec.sampling_rate
    if spec.text is None:
        if spec.length is None:
            raise ValueError("A noise-only clip needs a fixed length.")
        noise = background_noise(spec.length, sr, rng) * 10 ** (spec.noise_dbfs / 20)
        return RenderedClip(np.clip(noise, -1, 1).astype(np.float32))

    spoken = _speak([spec])[0] if spoken is None else spoken
    engine = engine_of(spec.voice)
    num_words = len(spec.text.split())
    if len(spoken.word_starts) != num_words:
        raise RuntimeError(
            f"{engine} spoke {len(spoken.word_starts)} words for the {num_words}-word text {spec.text!r}; "
            "use plain lowercase words without digits or abbreviations."
        )
    audio, trim_start = trim_silence(spoken.audio.astype(np.float32) / 32768.0, spoken.sampling_rate)
    if audio.size == 0:
        raise RuntimeError(f"{engine} produced silence for {spec.text!r} with voice {spec.voice!r}.")
    ratio = sr / spoken.sampling_rate
    word_starts = [max(0.0, (s - trim_start) * ratio) for s in spoken.word_starts]
    audio = resample(audio, spoken.sampling_rate, sr)
    if spec.rt60 is not None:
        audio = apply_reverb(audio, room_impulse_response(sr, spec.rt60, rng))
    audio = scale_to_peak_dbfs(audio, spec.peak_dbfs)
    speech_level = rms(audio)

    if spec.length is not None:
        audio, offset = fit_to_length(audio, spec.length, rng, shift=spec.time_shift)
    else:
        lead, trail = (rng.uniform(0.05, 0.3, size=2) if spec.time_shift else (0.1, 0.1))
        offset = int(lead * sr)
        audio = np.concatenate(
            [np.zeros(offset, np.float32), audio, np.zeros(int(trail * sr), np.float32)]
        )
    if spec.snr_db is not None:
        audio = add_noise(audio, background_noise(len(audio), sr, rng), spec.snr_db, reference_rms=speech_level)
    peak = np.abs(audio).max()
    if peak > 0.99:  # noise can push a loud clip over full scale
        audio = audio * (0.99 / peak)
    return RenderedClip(audio.astype(np.float32), [round((s + offset) / sr, 4) for s in word_starts])


def _render_shard(specs: list[ClipSpec]) -> list[RenderedClip]:
    return [render_clip(spec, spoken) for spec, spoken in zip(specs, _speak(specs))]


def _process_context():
    """``fork`` where the platform has it (workers need no re-import of the caller's script), else spawn."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _default_num_workers() -> int:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(available, 8))


def _render_all(specs: list[ClipSpec], num_workers: int | None, progress: bool, description: str) -> list[RenderedClip]:
    """Render ``specs`` in order; ``num_workers=0`` renders in this process."""
    from tqdm.auto import tqdm

    num_workers = _default_num_workers() if num_workers is None else num_workers
    if not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0 (0 renders in this process), got {num_workers!r}.")
    shards = [specs[i : i + SHARD_SIZE] for i in range(0, len(specs), SHARD_SIZE)]
    clips: list[RenderedClip] = []
    with tqdm(total=len(specs), desc=description, unit="clip", disable=not progress) as bar:
        if num_workers == 0 or len(shards) <= 1:
            for shard in shards:
                clips.extend(_render_shard(shard))
                bar.update(len(shard))
            return clips
        with _process_context().Pool(min(num_workers, len(shards))) as pool:
            for rendered in pool.imap(_render_shard, shards):
                clips.extend(rendered)
                bar.update(len(rendered))
    return clips


# --------------------------------------------------------------------------------------------------
# Validation, voices, caching
# --------------------------------------------------------------------------------------------------


def _check_range(name: str, value, low: float, high: float, allow_none: bool = False):
    if value is None and allow_none:
        return None
    try:
        lo, hi = (float(value), float(value)) if np.isscalar(value) else (float(value[0]), float(value[1]))
    except (TypeError, IndexError, ValueError):
        raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}.") from None
    if not low <= lo <= hi <= high:
        raise ValueError(f"{name}={value!r} must satisfy {low} <= low <= high <= {high}.")
    return [lo, hi]


def _check_common(sampling_rate: int, seed: int, split: str | None):
    if not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive integer number of Hz, got {sampling_rate!r}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    if split is not None and split not in SPLITS + (HELDOUT_SPLIT,):
        raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS} (or {HELDOUT_SPLIT!r} with "
                         "heldout_engines), or None for all.")


def _check_count(name: str, value: int, minimum: int = 1):
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_words(name: str, words: Sequence[str]) -> list[str]:
    words = list(words)
    if not words:
        raise ValueError(f"{name} is empty; pass at least one word.")
    for word in words:
        if not isinstance(word, str) or not word.strip() or not all(c.isalpha() or c in " '" for c in word):
            raise ValueError(f"{name} contains {word!r}; use words made of letters (digits: write 'seven').")
    return [w.strip().lower() for w in words]


def split_voices(
    voices: Sequence[str | Voice] | None = None, seed: int = 0, eval_fraction: float = 0.15
) -> dict[str, list[str]]:
    """Assign voices to train / validation / test so that no timbre of one split is in another.

    The unit of the split is the *variant* (the timbre); all accents of a variant go to the same split.
    Variants are sorted by base pitch and, in each block of ``round(1 / eval_fraction)`` neighbours, one
    goes to validation and one to test, so every split covers low and high voices.

    Raises:
        ValueError: for an unknown voice, or fewer than 3 distinct variants.
    """
    parsed = list_voices() if voices is None else [parse_voice(v) for v in voices]
    if not 0 < eval_fraction <= 1 / 3:
        raise ValueError(f"eval_fraction must be in (0, 1/3], got {eval_fraction}.")
    variants = sorted({v.variant or "" for v in parsed}, key=lambda name: (variant_base_pitch(name) if name else 100.0, name))
    if len(variants) < 3:
        raise ValueError(
            f"Splitting by voice needs at least 3 distinct variants (one per split), got {variants}. "
            "Pass more voices, e.g. ['en+m1', 'en+f3', 'en-us+m3']."
        )
    rng = np.random.default_rng([seed, 7])
    block = max(3, round(1 / eval_fraction))
    split_of: dict[str, str] = {}
    for start in range(0, len(variants), block):
        members = [variants[i] for i in rng.permutation(np.arange(start, min(start + block, len(variants))))]
        for position, name in enumerate(members):
            split_of[name] = "validation" if position == 0 else "test" if position == 1 else "train"
    if "train" not in split_of.values():  # tiny pools: make sure train is not empty
        split_of[variants[-1]] = "train"
    result = {name: sorted(v.name for v in parsed if split_of[v.variant or ""] == name) for name in SPLITS}
    for name, members in result.items():
        if not members:
            raise ValueError(f"No voice left for the {name} split; pass more voices (distinct variants).")
    return result


MIN_VOICES_TO_SPLIT = 6  # an engine with fewer voices goes to train only


def _split_by_name(names: list[str], seed: int) -> dict[str, list[str]]:
    """Voices of an engine other than espeak-ng split by voice: in each block of 6 (sorted by name), one to
    validation, one to test, the rest to train."""
    rng = np.random.default_rng([seed, 11])
    result = {name: [] for name in SPLITS}
    names = sorted(names)
    for start in range(0, len(names), MIN_VOICES_TO_SPLIT):
        block = [names[i] for i in rng.permutation(np.arange(start, min(start + MIN_VOICES_TO_SPLIT, len(names))))]
        for position, name in enumerate(block):
            result["validation" if position == 0 else "test" if position == 1 else "train"].append(name)
    return {name: sorted(members) for name, members in result.items()}


def corpus_voices(
    voices: Sequence[str] | None = None,
    engines: Sequence[str] = ("espeak-ng",),
    heldout_engines: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, list[str]]:
    """The voices of each split of a corpus: ``{"train", "validation", "test"[, "heldout_engine"]: [voice, ...]}``.

    ``voices`` (names of any engine, see :mod:`.engines`) replaces the default pool, which is every voice of
    ``engines``. espeak-ng voices are split by :func:`split_voices`; another engine's voices by voice when it has at
    least 6, else all to train. ``heldout_engines`` (none of ``engines``, and none of ``voices``' engines) make the
    ``heldout_engine`` split: all their voices, heard in no other split.
    With the defaults this is exactly ``split_voices(None, seed)``.
    """
    engines = check_engine_names(engines)
    heldout_engines = check_engine_names(heldout_engines, "heldout_engines")
    pool = [v.name if isinstance(v, Voice) else str(v) for v in voices] if voices is not None else None
    used = sorted({engine_of(v) for v in pool}) if pool is not None else engines
    if not used:
        raise ValueError("No voices: pass voices= or at least one engine in engines=.")
    overlap = sorted(set(used) & set(heldout_engines))
    if overlap:
        raise ValueError(f"{overlap} cannot both train and be held out; an engine is either in engines/voices or in "
                         "heldout_engines.")
    if pool is None and list(engines) == ["espeak-ng"]:
        result = split_voices(None, seed)
    else:
        pool = pool if pool is not None else [v for engine in engines for v in engine_voices(engine)]
        result = {name: [] for name in SPLITS}
        for engine in sorted({engine_of(v) for v in pool}):
            members = [v for v in pool if engine_of(v) == engine]
            if engine == "espeak-ng":
                part = split_voices(members, seed)
            elif len(members) >= MIN_VOICES_TO_SPLIT:
                part = _split_by_name(members, seed)
            else:
                part = {"train": sorted(members), "validation": [], "test": []}
            for name in SPLITS:
                result[name].extend(part[name])
        for name, members in result.items():
            if not members:
                raise ValueError(f"No voice left for the {name} split: the engines given have too few voices "
                                 f"(an engine needs {MIN_VOICES_TO_SPLIT} to be split); add espeak-ng or more voices.")
    if heldout_engines:
        result[HELDOUT_SPLIT] = [v for engine in heldout_engines for v in engine_voices(engine)]
    return result


def _check_heldout_size(name: str, value: int | None, heldout_engines) -> None:
    """``value`` (None: as the evaluation splits) sizes the ``heldout_engine`` split, so it needs held-out engines."""
    if value is not None:
        _check_count(name, value)
        if not heldout_engines:
            raise ValueError(f"{name} sizes the heldout_engine split: pass heldout_engines too.")


def _record_heldout_size(config: dict, name: str, value: int | None, eval_size: int) -> None:
    """Put a held-out size into the cache key only when it differs from the evaluation splits' size, so that corpora
    cached before held-out sizes existed (and calls that pass the default size) stay the same cache entry."""
    if value is not None and value != eval_size:
        config[name] = value


def _split_size(split_name: str, config: dict, train_size: int, eval_size: int, heldout_name: str) -> int:
    """Items of ``split_name``: train's, the held-out split's recorded size (else the evaluation size), or the
    evaluation size for validation and test."""
    if split_name == "train":
        return train_size
    return config.get(heldout_name, eval_size) if split_name == HELDOUT_SPLIT else eval_size


def _check_engine_weights(engine_weights, engines) -> dict[str, float] | None:
    """``engine_weights`` aligned with ``engines`` -> ``{engine: share}`` summing to 1 (``None``: equal shares)."""
    if engine_weights is None:
        return None
    weights = [float(w) for w in engine_weights]
    if len(weights) != len(engines) or any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"engine_weights must give one positive weight per engine of {list(engines)}, got "
                         f"{list(engine_weights)}.")
    return {engine: round(w / sum(weights), 6) for engine, w in zip(engines, weights)}


def _corpus_voice_config(voices, engines, heldout_engines, seed, engine_weights=None) -> dict:
    """The cache-key entries for a corpus' voices: for espeak-ng alone the same keys as before engines existed, so
    cached espeak-only corpora stay valid."""
    config = {"voices": corpus_voices(voices, engines, heldout_engines, seed)}
    used = sorted({engine_of(v) for members in config["voices"].values() for v in members})
    if used != ["espeak-ng"]:
        config["engines"] = used
    weights = _check_engine_weights(engine_weights, list(engines))
    if weights is not None:
        config["engine_weights"] = weights
    return config


def _pick_voice(rng: np.random.Generator, names: list[str], weights: dict[str, float] | None = None) -> str:
    """One voice of ``names``: uniformly when they share one engine; else an engine first (equal shares, or
    ``weights``' shares among the engines present), then one of its voices, so three Festival voices are not drowned by
    555 espeak-ng ones."""
    engines = sorted({engine_of(v) for v in names})
    if len(engines) == 1:
        return names[rng.integers(len(names))]
    if weights is None or not any(e in weights for e in engines):  # e.g. several held-out engines: equal shares
        engine = engines[rng.integers(len(engines))]
    else:
        shares = np.asarray([weights.get(e, 0.0) for e in engines])
        engine = engines[rng.choice(len(engines), p=shares / shares.sum())]
    members = [v for v in names if engine_of(v) == engine]
    return members[rng.integers(len(members))]


@contextmanager
def _datasets_progress_bars(enabled: bool):
    """Show or hide the progress bars of ``datasets`` for the duration of the block."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def _cached(
    name: str,
    config: dict,
    build: Callable[[], "DatasetDict"],  # noqa: F821
    cache_dir: str | os.PathLike | None,
    progress: bool,
):
    """Load the corpus from ``cache_dir`` if it was built with the same config, else build and save it."""
    from datasets import load_from_disk

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    identity = {"corpus": name, "version": CORPUS_VERSION, "espeak": espeak_version(), **config}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = root / f"{name}-{key}"
    if (path / "dataset_dict.json").is_file():
        with _datasets_progress_bars(progress):
            return load_from_disk(str(path))
    dataset = build()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with _datasets_progress_bars(progress):
        dataset.save_to_disk(str(tmp))
    (tmp / "corpus_config.json").write_text(json.dumps(identity, indent=2, sort_keys=True))
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished the same corpus first
        shutil.rmtree(tmp, ignore_errors=True)
    with _datasets_progress_bars(progress):
        return load_from_disk(str(path))


def _select(dataset, split: str | None):
    return dataset if split is None else dataset[split]


def _audio_features() -> dict:
    from datasets import List, Value

    return {"array": List(Value("float32")), "sampling_rate": Value("int32")}


def _to_dataset(columns: dict, features: dict):
    from datasets import Dataset, Features

    return Dataset.from_dict(columns, features=Features(features))


def _audio_column(clips: list[RenderedClip], sampling_rate: int) -> list[dict]:
    return [{"array": clip.audio, "sampling_rate": sampling_rate} for clip in clips]


def _seed_for(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _augmentation(rng, noise_snr_db, reverb_probability, rt60_range, peak_dbfs_range) -> dict:
    return {
        "snr_db": None if noise_snr_db is None else round(float(rng.uniform(*noise_snr_db)), 2),
        "rt60": round(float(rng.uniform(*rt60_range)), 3) if rng.random() < reverb_probability else None,
        "peak_dbfs": round(float(rng.uniform(*peak_dbfs_range)), 2),
    }


# --------------------------------------------------------------------------------------------------
# Keyword spotting (Speech Commands style)
# --------------------------------------------------------------------------------------------------


def load_keywords(
    split: str | None = None,
    num_per_class: int = 200,
    num_eval_per_class: int | None = None,
    num_heldout_per_class: int | None = None,
    include_digits: bool = False,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    noise_snr_db: tuple[float, float] | None = (10, 30),
    reverb_probability: float = 0.3,
    rt60_range: tuple[float, float] = (0.1, 0.6),
    rate_wpm: tuple[int, int] = (120, 220),
    pitch: tuple[int, int] = (25, 75),
    peak_dbfs: tuple[float, float] = (-20, -1),
    silence_dbfs: tuple[float, float] = (-60, -20),
    voices: Sequence[str] | None = None,
    engines: Sequence[str] = ("espeak-ng",),
    heldout_engines: Sequence[str] = (),
    engine_weights: Sequence[float] | None = None,
    commands: Sequence[str] | None = None,
    unknown_words: Sequence[str] | None = None,
    sampling_rate: int = 16000,
    clip_seconds: float = 1.0,
    num_workers: int | None = None,
    progress: bool = True,
):
    """Keyword spotting like Speech Commands v2's 12-class task: 10 commands + ``_silence_`` + ``_unknown_``.

    Each class has ``num_per_class`` clips in train and ``num_eval_per_class`` (default ``num_per_class
    // 4``) in validation and in test; validation and test voices are never heard in training
    (:func:`split_voices`). Clips are ``clip_seconds`` long; the word sits at a random offset.
    ``_silence_`` is background noise alone; ``_unknown_`` is another word (:data:`UNKNOWN_WORDS`, which
    includes the digits unless ``include_digits`` makes them 10 more command classes).

    Args:
        split: "train", "validation" or "test" for one ``Dataset``; None for the ``DatasetDict``.
        noise_snr_db: SNR range of the added background noise (None: clean speech).
        reverb_probability, rt60_range: share of clips in a synthetic room, and its RT60 in seconds.
        rate_wpm, pitch: ranges of espeak's speaking rate (words/minute) and base pitch (0..100).
        peak_dbfs, silence_dbfs: speech peak level and noise-only RMS level ranges.
        voices: voices of any engine (default: every voice of ``engines``).
        engines: training engines (default espeak-ng's 8 English accents x 81 variants; see :mod:`.engines`).
        heldout_engines: engines whose voices make the extra ``heldout_engine`` split only (``num_heldout_per_class``
            clips per class, default ``num_eval_per_class`` like test; more clips, less sampling noise on the number
            that says whether a model generalises; the other splits stay the same bytes).
        engine_weights: share of each engine of ``engines`` (same order) where a split has several (default equal).
        commands, unknown_words: replace the word lists.
        cache_dir: where built corpora are kept (default :func:`default_cache_dir`).
        num_workers: rendering processes (default: the CPUs available).

    Returns:
        ``DatasetDict`` (or one ``Dataset``) with columns ``audio`` ({array: float32[], sampling_rate}),
        ``label`` (``ClassLabel``), ``text`` (the word spoken, "" for silence), ``voice``, ``id``.
    """
    _check_common(sampling_rate, seed, split)
    _check_count("num_per_class", num_per_class)
    num_eval_per_class = max(1, num_per_class // 4) if num_eval_per_class is None else num_eval_per_class
    _check_count("num_eval_per_class", num_eval_per_class)
    _check_heldout_size("num_heldout_per_class", num_heldout_per_class, heldout_engines)
    commands = list(COMMANDS) + (list(DIGITS) if include_digits else []) if commands is None else commands
    commands = _check_words("commands", commands)
    if unknown_words is None:
        unknown_words = [w for w in UNKNOWN_WORDS + (() if include_digits else DIGITS) if w not in commands]
    unknown_words = _check_words("unknown_words", unknown_words)
    if set(unknown_words) & set(commands):
        raise ValueError(f"unknown_words repeat command words {sorted(set(unknown_words) & set(commands))}.")
    if not 0 < clip_seconds <= 10:
        raise ValueError(f"clip_seconds must be in (0, 10], got {clip_seconds}.")
    config = {
        "num_per_class": num_per_class, "num_eval_per_class": num_eval_per_class, "seed": seed,
        "noise_snr_db": _check_range("noise_snr_db", noise_snr_db, -20, 100, allow_none=True),
        "reverb_probability": _check_range("reverb_probability", reverb_probability, 0, 1)[0],
        "rt60_range": _check_range("rt60_range", rt60_range, 0.01, 5),
        "rate_wpm": _check_range("rate_wpm", rate_wpm, 80, 450),
        "pitch": _check_range("pitch", pitch, 0, 100),
        "peak_dbfs": _check_range("peak_dbfs", peak_dbfs, -60, 0),
        "silence_dbfs": _check_range("silence_dbfs", silence_dbfs, -90, 0),
        **_corpus_voice_config(voices, engines, heldout_engines, seed, engine_weights),
        "commands": commands, "unknown_words": unknown_words,
        "sampling_rate": int(sampling_rate), "clip_seconds": float(clip_seconds),
    }
    _record_heldout_size(config, "num_heldout_per_class", num_heldout_per_class, num_eval_per_class)
    labels = commands + [SILENCE_LABEL, UNKNOWN_LABEL]

    def build():
        from datasets import ClassLabel, DatasetDict, Value

        check_engines([v for members in config["voices"].values() for v in members])
        rng = np.random.default_rng([seed, 1])
        length = int(round(config["clip_seconds"] * sampling_rate))
        splits = {}
        for split_name in config["voices"]:
            count = _split_size(split_name, config, num_per_class, num_eval_per_class, "num_heldout_per_class")
            split_voice_names = config["voices"][split_name]
            rows = []
            for label_index, label in enumerate(labels):
                for _ in range(count):
                    if label == SILENCE_LABEL:
                        spec = ClipSpec(
                            text=None, voice=None, seed=_seed_for(rng), sampling_rate=sampling_rate, length=length,
                            noise_dbfs=round(float(rng.uniform(*config["silence_dbfs"])), 2),
                        )
                    else:
                        word = label if label != UNKNOWN_LABEL else unknown_words[rng.integers(len(unknown_words))]
                        spec = ClipSpec(
                            text=word,
                            voice=_pick_voice(rng, split_voice_names, config.get("engine_weights")),
                            seed=_seed_for(rng),
                            sampling_rate=sampling_rate,
                            punctuation=str(rng.choice([".", "!", "?", ""], p=[0.4, 0.2, 0.2, 0.2])),
                            rate=int(rng.integers(config["rate_wpm"][0], config["rate_wpm"][1] + 1)),
                            pitch=int(rng.integers(config["pitch"][0], config["pitch"][1] + 1)),
                            pitch_range=int(rng.integers(20, 90)),
                            length=length,
                            **_augmentation(
                                rng, config["noise_snr_db"], config["reverb_probability"], config["rt60_range"],
                                config["peak_dbfs"],
                            ),
                        )
                    rows.append((label_index, spec))
            order = rng.permutation(len(rows))
            rows = [rows[i] for i in order]
            clips = _render_all([spec for _, spec in rows], num_workers, progress, f"keywords/{split_name}")
            splits[split_name] = _to_dataset(
                {
                    "audio": _audio_column(clips, sampling_rate),
                    "label": [label_index for label_index, _ in rows],
                    "text": [spec.text or "" for _, spec in rows],
                    "voice": [spec.voice or "" for _, spec in rows],
                    "id": [f"{split_name}-{i:05d}" for i in range(len(rows))],
                },
                {
                    "audio": _audio_features(), "label": ClassLabel(names=labels), "text": Value("string"),
                    "voice": Value("string"), "id": Value("string"),
                },
            )
        return DatasetDict(splits)

    return _select(_cached("keywords", config, build, cache_dir, progress), split)


def load_unlabeled_audio(num_per_class: int = 200, seed: int = 0, cache_dir=None, **keyword_options):
    """Unlabeled 1 s clips for self-supervised pretraining (e.g. SSAMBA's masked patch modelling).

    The train split of :func:`load_keywords` (same options, same cache) with only the ``audio`` column, so
    no voice of the keyword validation and test splits is in it.
    """
    train = load_keywords("train", num_per_class=num_per_class, seed=seed, cache_dir=cache_dir, **keyword_options)
    return train.select_columns(["audio"])


# --------------------------------------------------------------------------------------------------
# Speaker identification
# --------------------------------------------------------------------------------------------------


def _pick_speakers(num_speakers: int, seed: int) -> list[str]:
    """``num_speakers`` voices with distinct variants spread over the pitch range, each with an accent."""
    rng = np.random.default_rng([seed, 3])
    voices = list_voices()
    variants = sorted({v.variant for v in voices}, key=lambda name: (variant_base_pitch(name), name))
    if num_speakers > len(variants):
        raise ValueError(f"num_speakers={num_speakers} exceeds the {len(variants)} available variants; pass voices=.")
    # one variant from each of num_speakers pitch bands
    bands = np.array_split(np.arange(len(variants)), num_speakers)
    accents = sorted({v.accent for v in voices})
    return [f"{accents[rng.integers(len(accents))]}+{variants[rng.choice(band)]}" for band in bands]


def load_speakers(
    split: str | None = None,
    num_speakers: int = 10,
    num_sentences: int = 60,
    eval_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    voices: Sequence[str] | None = None,
    noise_snr_db: tuple[float, float] | None = (15, 35),
    reverb_probability: float = 0.2,
    rt60_range: tuple[float, float] = (0.1, 0.5),
    rate_wpm: tuple[int, int] = (140, 200),
    pitch: tuple[int, int] = (40, 60),
    peak_dbfs: tuple[float, float] = (-20, -1),
    sampling_rate: int = 16000,
    num_workers: int | None = None,
    progress: bool = True,
):
    """Speaker identification: every voice speaks the same sentences; ``label`` is the voice.

    Here the label *is* the voice, so the splits are by **sentence** instead: a sentence of the test split
    is never spoken in train (by anyone). ``eval_fraction`` of the sentences go to validation and as many
    to test. Voices default to ``num_speakers`` distinct timbres spread from low to high pitch; rate and
    pitch vary a little per clip (less than in the keyword corpus, so a voice stays recognisable).
    Clips have their natural length plus 0.05-0.3 s of padding on each side.

    Returns:
        columns ``audio``, ``label`` (``ClassLabel`` of voice names), ``text``, ``voice``, ``id``.
    """
    _check_common(sampling_rate, seed, split)
    _check_count("num_sentences", num_sentences, minimum=3)
    if voices is None:
        _check_count("num_speakers", num_speakers, minimum=2)
        voices = _pick_speakers(num_speakers, seed)
    else:
        voices = [parse_voice(v).name for v in voices]
        if len(set(voices)) < 2:
            raise ValueError(f"Speaker identification needs at least 2 distinct voices, got {voices}.")
        voices = list(dict.fromkeys(voices))
    if not 0 < eval_fraction <= 1 / 3:
        raise ValueError(f"eval_fraction must be in (0, 1/3], got {eval_fraction}.")
    config = {
        "voices": voices, "num_sentences": num_sentences, "eval_fraction": eval_fraction, "seed": seed,
        "noise_snr_db": _check_range("noise_snr_db", noise_snr_db, -20, 100, allow_none=True),
        "reverb_probability": _check_range("reverb_probability", reverb_probability, 0, 1)[0],
        "rt60_range": _check_range("rt60_range", rt60_range, 0.01, 5),
        "rate_wpm": _check_range("rate_wpm", rate_wpm, 80, 450),
        "pitch": _check_range("pitch", pitch, 0, 100),
        "peak_dbfs": _check_range("peak_dbfs", peak_dbfs, -60, 0),
        "sampling_rate": int(sampling_rate),
    }

    def build():
        from datasets import ClassLabel, DatasetDict, Value

        rng = np.random.default_rng([seed, 2])
        sentences = _unique_sentences(rng, num_sentences)
        num_eval = max(1, int(round(num_sentences * eval_fraction)))
        by_split = {
            "validation": sentences[:num_eval],
            "test": sentences[num_eval : 2 * num_eval],
            "train": sentences[2 * num_eval :],
        }
        splits = {}
        for split_name in SPLITS:
            rows = []
            for text, punctuation in by_split[split_name]:
                for label_index, voice in enumerate(voices):
                    spec = ClipSpec(
                        text=text, voice=voice, seed=_seed_for(rng), sampling_rate=sampling_rate,
                        punctuation=punctuation,
                        rate=int(rng.integers(config["rate_wpm"][0], config["rate_wpm"][1] + 1)),
                        pitch=int(rng.integers(config["pitch"][0], config["pitch"][1] + 1)),
                        pitch_range=int(rng.integers(30, 70)),
                        **_augmentation(
                            rng, config["noise_snr_db"], config["reverb_probability"], config["rt60_range"],
                            config["peak_dbfs"],
                        ),
                    )
                    rows.append((label_index, spec))
            rows = [rows[i] for i in rng.permutation(len(rows))]
            clips = _render_all([spec for _, spec in rows], num_workers, progress, f"speakers/{split_name}")
            splits[split_name] = _to_dataset(
                {
                    "audio": _audio_column(clips, sampling_rate),
                    "label": [label for label, _ in rows],
                    "text": [spec.text for _, spec in rows],
                    "voice": [spec.voice for _, spec in rows],
                    "id": [f"{split_name}-{i:05d}" for i in range(len(rows))],
                },
                {
                    "audio": _audio_features(), "label": ClassLabel(names=voices), "text": Value("string"),
                    "voice": Value("string"), "id": Value("string"),
                },
            )
        return DatasetDict(splits)

    return _select(_cached("speakers", config, build, cache_dir, progress), split)


def _unique_sentences(rng: np.random.Generator, count: int, words: list[str] | None = None) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for _ in range(count * 50):
        text, punctuation = make_sentence(rng, words)
        seen.setdefault(text, punctuation)
        if len(seen) == count:
            return list(seen.items())
    raise ValueError(f"The grammar cannot make {count} distinct sentences from this word list; ask for fewer.")


# --------------------------------------------------------------------------------------------------
# Transcribed speech (ASR)
# --------------------------------------------------------------------------------------------------


def load_transcribed(
    kind: str = "digits",
    split: str | None = None,
    num_train: int = 2000,
    num_eval: int = 200,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    voices: Sequence[str] | None = None,
    engines: Sequence[str] = ("espeak-ng",),
    heldout_engines: Sequence[str] = (),
    engine_weights: Sequence[float] | None = None,
    num_heldout: int | None = None,
    words: Sequence[str] | None = None,
    min_digits: int = 1,
    max_digits: int = 7,
    noise_snr_db: tuple[float, float] | None = (15, 35),
    reverb_probability: float = 0.2,
    rt60_range: tuple[float, float] = (0.1, 0.5),
    rate_wpm: tuple[int, int] = (130, 210),
    pitch: tuple[int, int] = (30, 70),
    peak_dbfs: tuple[float, float] = (-20, -1),
    sampling_rate: int = 16000,
    num_workers: int | None = None,
    progress: bool = True,
):
    """Utterances with transcripts for CTC and decoder-only ASR.

    ``kind="digits"``: digit strings spoken as words ("three one four"), ``min_digits``..``max_digits``
    long, like TIDIGITS. ``kind="sentences"``: 3-8 word sentences from a small grammar; ``words``
    replaces its noun list. Transcripts are lowercase words without punctuation (the speech has the
    intonation of a statement or a question). ``num_train`` utterances in train, ``num_eval`` in
    validation and in test, whose voices are never heard in training. ``voices``, ``engines`` and
    ``heldout_engines`` as in :func:`load_keywords` (the ``heldout_engine`` split has ``num_heldout`` utterances,
    default ``num_eval``; the other splits are the same bytes whatever its size).

    Returns:
        columns ``audio``, ``text``, ``voice``, ``id`` and ``word_starts`` (onset of each word in seconds,
        one per word of ``text``, from espeak's word events).
    """
    if kind not in ("digits", "sentences"):
        raise ValueError(f"Unknown kind {kind!r}; choose 'digits' or 'sentences'.")
    _check_common(sampling_rate, seed, split)
    _check_count("num_train", num_train)
    _check_count("num_eval", num_eval)
    _check_heldout_size("num_heldout", num_heldout, heldout_engines)
    if words is not None:
        words = _check_words("words", words)
        if kind != "sentences":
            raise ValueError("words= only applies to kind='sentences'.")
    if not 1 <= min_digits <= max_digits <= 30:
        raise ValueError(f"Need 1 <= min_digits <= max_digits <= 30, got {min_digits} and {max_digits}.")
    config = {
        "kind": kind, "num_train": num_train, "num_eval": num_eval, "seed": seed, "words": words,
        "digits": [min_digits, max_digits] if kind == "digits" else None,
        "noise_snr_db": _check_range("noise_snr_db", noise_snr_db, -20, 100, allow_none=True),
        "reverb_probability": _check_range("reverb_probability", reverb_probability, 0, 1)[0],
        "rt60_range": _check_range("rt60_range", rt60_range, 0.01, 5),
        "rate_wpm": _check_range("rate_wpm", rate_wpm, 80, 450),
        "pitch": _check_range("pitch", pitch, 0, 100),
        "peak_dbfs": _check_range("peak_dbfs", peak_dbfs, -60, 0),
        **_corpus_voice_config(voices, engines, heldout_engines, seed, engine_weights),
        "sampling_rate": int(sampling_rate),
    }
    _record_heldout_size(config, "num_heldout", num_heldout, num_eval)

    def build():
        from datasets import DatasetDict, List, Value

        check_engines([v for members in config["voices"].values() for v in members])
        rng = np.random.default_rng([seed, 4])
        splits = {}
        for split_name in config["voices"]:
            split_voice_names = config["voices"][split_name]
            specs = []
            for _ in range(_split_size(split_name, config, num_train, num_eval, "num_heldout")):
                if kind == "digits":
                    text, punctuation = digit_string(rng, min_digits, max_digits), "."
                else:
                    text, punctuation = make_sentence(rng, words)
                specs.append(
                    ClipSpec(
                        text=text, voice=_pick_voice(rng, split_voice_names, config.get("engine_weights")),
                        seed=_seed_for(rng), sampling_rate=sampling_rate, punctuation=punctuation,
                        rate=int(rng.integers(config["rate_wpm"][0], config["rate_wpm"][1] + 1)),
                        pitch=int(rng.integers(config["pitch"][0], config["pitch"][1] + 1)),
                        pitch_range=int(rng.integers(20, 80)),
                        **_augmentation(
                            rng, config["noise_snr_db"], config["reverb_probability"], config["rt60_range"],
                            config["peak_dbfs"],
                        ),
                    )
                )
            clips = _render_all(specs, num_workers, progress, f"transcribed-{kind}/{split_name}")
            splits[split_name] = _to_dataset(
                {
                    "audio": _audio_column(clips, sampling_rate),
                    "text": [spec.text for spec in specs],
                    "word_starts": [clip.word_starts for clip in clips],
                    "voice": [spec.voice for spec in specs],
                    "id": [f"{split_name}-{i:05d}" for i in range(len(specs))],
                },
                {
                    "audio": _audio_features(), "text": Value("string"), "word_starts": List(Value("float32")),
                    "voice": Value("string"), "id": Value("string"),
                },
            )
        return DatasetDict(splits)

    return _select(_cached(f"transcribed-{kind}", config, build, cache_dir, progress), split)


# --------------------------------------------------------------------------------------------------
# Plain text for language-model demos
# --------------------------------------------------------------------------------------------------


def _arithmetic_sentence(rng: np.random.Generator) -> str:
    a, b = (int(x) for x in rng.integers(0, 10, size=2))
    if rng.random() < 0.5:
        return f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}."
    a, b = max(a, b), min(a, b)
    return f"{NUMBER_WORDS[a]} minus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a - b]}."


def load_text_corpus(
    split: str | None = None,
    num_sentences: int = 20000,
    kind: str = "mixed",
    eval_fraction: float = 0.05,
    seed: int = 0,
    words: Sequence[str] | None = None,
):
    """Plain text for language-model demos: one sentence per row in a ``text`` column.

    ``kind="sentences"``: the grammar of :func:`load_transcribed`; ``"arithmetic"``: "three plus four is
    seven." (the answer is predictable, so it shows whether a model learned); ``"mixed"``: both, plus
    digit strings; ``"facts"``: statements of fixed facts about every noun (``words``, default the
    grammar's nouns), "the X lives near the Y.", "the X is Z.", "N owns the X." (see
    :func:`~mamba_zoo.corpora.vocabulary.fact_book`): the same facts recur in every split, so a model
    predicts them only as well as it memorised them. Built in memory (it takes well under a second), so it
    is not cached.
    """
    if kind not in ("sentences", "arithmetic", "mixed", "facts"):
        raise ValueError(f"Unknown kind {kind!r}; choose 'sentences', 'arithmetic', 'mixed' or 'facts'.")
    _check_common(1, seed, split)
    _check_count("num_sentences", num_sentences, minimum=3)
    if not 0 < eval_fraction <= 1 / 3:
        raise ValueError(f"eval_fraction must be in (0, 1/3], got {eval_fraction}.")
    if words is not None:
        words = _check_words("words", words)
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng([seed, 5])
    book = fact_book(np.random.default_rng([seed, 6]), words) if kind == "facts" else None
    texts = []
    for _ in range(num_sentences):
        if book is not None:
            texts.append(make_fact(rng, book))
            continue
        choice = {"sentences": 0, "arithmetic": 1}.get(kind, int(rng.choice(3, p=[0.6, 0.3, 0.1])))
        if choice == 0:
            text, punctuation = make_sentence(rng, words)
            texts.append(text + punctuation)
        elif choice == 1:
            texts.append(_arithmetic_sentence(rng))
        else:
            texts.append(digit_string(rng, 3, 7) + ".")
    num_eval = max(1, int(round(num_sentences * eval_fraction)))
    dataset = DatasetDict(
        {
            "train": Dataset.from_dict({"text": texts[2 * num_eval :]}),
            "validation": Dataset.from_dict({"text": texts[:num_eval]}),
            "test": Dataset.from_dict({"text": texts[num_eval : 2 * num_eval]}),
        }
    )
    return _select(dataset, split)
