"""A small ctypes binding to the espeak-ng speech synthesizer shipped in the ``espeakng-loader`` wheel.

The wheel bundles ``libespeak-ng`` and its voice data; nothing is downloaded. espeak-ng speaks at
22.05 kHz in 16-bit mono. We drive it in *synchronous* mode: ``espeak_Synth`` blocks and hands the
samples and word events to a callback, which collects them.

A *voice* here is an English accent (a language file such as ``en-us`` or ``en-gb-scotland``) combined
with a *variant* (a timbre file from ``voices/!v`` such as ``m1``, ``f3`` or ``klatt2``), written the
espeak way: ``"en-us+f3"``.

Two facts about the library shape how it is used:

* espeak-ng keeps global state in the process (the voice, the parameters, the callback), so it is not
  thread-safe. Calls here are serialised with a lock; use processes, not threads, for parallelism.
* Its output is not a pure function of the input: the wave generator keeps a pitch-flutter phase from
  one utterance to the next, breathy and Klatt voices draw from an internal random generator, and the
  speechPlayer engine (``klatt 6`` variants) from the C library's ``rand()``. So :func:`synthesize`
  loads a private copy of the library afresh for every utterance (a few milliseconds) and seeds both
  generators: the same request always gives the same samples, which makes
  every corpus byte-for-byte reproducible whatever the order or the number of worker processes.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import ctypes.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "ENGLISH_ACCENTS",
    "EXCLUDED_VARIANTS",
    "SynthResult",
    "Voice",
    "default_variants",
    "espeak_version",
    "list_variants",
    "list_voices",
    "parse_voice",
    "synthesize",
]

# English accents of espeak-ng (language files under espeak-ng-data/lang/gmw). The key is the name
# given to espeak_SetVoiceByName.
ENGLISH_ACCENTS: dict[str, str] = {
    "en": "British English",
    "en-us": "American English",
    "en-gb-scotland": "Scottish English",
    "en-gb-x-rp": "British English, Received Pronunciation",
    "en-gb-x-gbclan": "British English, Lancaster",
    "en-gb-x-gbcwmd": "British English, West Midlands",
    "en-029": "Caribbean English",
    "en-us-nyc": "American English, New York City",
}

# Variants left out of the default voice pool: heavy echo, robot or whisper effects, joke voices and
# duplicates. They remain available by name (``voices=["en+whisper", ...]``).
EXCLUDED_VARIANTS: frozenset[str] = frozenset(
    {
        "Demonic", "UniRobot", "anikaRobot", "announcer", "croak", "fast", "whisper", "whisperf",
        "RicishayMax", "RicishayMax2", "RicishayMax3", "Mr serious",
        "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7",
        "robosoft8", "caleb", "Storm", "Tweaky",
    }
)

# espeak_SetParameter ids and limits (speak_lib.h).
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_PUNCTUATION = 5
_PARAM_WORDGAP = 7
RATE_MIN_WPM, RATE_MAX_WPM = 80, 450

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1


def _data_path() -> Path:
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


@lru_cache(maxsize=1)
def list_variants() -> tuple[str, ...]:
    """Names of every voice variant (timbre) in the bundled ``espeak-ng-data/voices/!v`` folder."""
    variant_dir = _data_path() / "voices" / "!v"
    if not variant_dir.is_dir():
        raise RuntimeError(f"espeak-ng voice variants not found at {variant_dir}; reinstall espeakng-loader.")
    return tuple(sorted(p.name for p in variant_dir.iterdir() if p.is_file() and " " not in p.name))


def default_variants() -> tuple[str, ...]:
    """The variants used when a corpus is built without an explicit voice list (human-like timbres)."""
    return tuple(v for v in list_variants() if v not in EXCLUDED_VARIANTS)


@lru_cache(maxsize=None)
def variant_base_pitch(variant: str) -> float:
    """Mean of the ``pitch low high`` line of a variant file, in Hz (espeak's default 82-118 if absent)."""
    low, high = 82.0, 118.0
    for line in (_data_path() / "voices" / "!v" / variant).read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "pitch":
            low, high = float(fields[1]), float(fields[2])
    return (low + high) / 2


@dataclass(frozen=True, order=True)
class Voice:
    """An English accent plus an optional timbre variant; ``name`` is the espeak voice string."""

    accent: str
    variant: str | None = None

    @property
    def name(self) -> str:
        return self.accent if self.variant is None else f"{self.accent}+{self.variant}"

    def __str__(self) -> str:
        return self.name


def parse_voice(voice: str | Voice) -> Voice:
    """Parse and validate ``"accent"`` or ``"accent+variant"`` (e.g. ``"en-us+f3"``).

    Raises:
        ValueError: for an accent outside :data:`ENGLISH_ACCENTS` or a variant that does not exist.
            (espeak itself silently ignores an unknown variant, so we check.)
    """
    if isinstance(voice, Voice):
        accent, variant = voice.accent, voice.variant
    elif isinstance(voice, str):
        accent, _, variant = voice.partition("+")
        variant = variant or None
    else:
        raise ValueError(f"A voice must be a string like 'en-us+f3' or a Voice, got {type(voice).__name__}.")
    accent = accent.strip().lower()
    if accent not in ENGLISH_ACCENTS:
        raise ValueError(
            f"Unknown voice {str(voice)!r}: accent {accent!r} is not one of {sorted(ENGLISH_ACCENTS)}. "
            "Write voices as 'accent+variant', e.g. 'en-us+f3'."
        )
    if variant is not None and variant not in list_variants():
        raise ValueError(
            f"Unknown voice {str(voice)!r}: variant {variant!r} does not exist. "
            f"Choose one of mamba_zoo.corpora.list_variants(), e.g. {list(default_variants()[:6])}."
        )
    return Voice(accent, variant)


def list_voices(accents: list[str] | None = None, variants: list[str] | None = None) -> list[Voice]:
    """Every (accent, variant) combination; defaults: all English accents x :func:`default_variants`."""
    accents = list(ENGLISH_ACCENTS) if accents is None else accents
    variants = list(default_variants()) if variants is None else variants
    return [parse_voice(f"{a}+{v}") for a in accents for v in variants]


@dataclass
class SynthResult:
    """One synthesized utterance.

    Attributes:
        audio: ``(num_samples,)`` int16 samples at ``sampling_rate``.
        sampling_rate: espeak's output rate (22050 Hz).
        word_starts: sample index where each spoken word begins (one entry per word espeak spoke).
        word_spans: ``(start, length)`` character span in the text of each spoken word.
    """

    audio: np.ndarray
    sampling_rate: int
    word_starts: list[int]
    word_spans: list[tuple[int, int]]


class _EspeakEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_void_p),  # a union of int / char* / char[8]; we do not read it
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


class _EspeakInstance:
    """A freshly loaded libespeak-ng, initialised and ready to speak; ``close()`` unloads it again.

    espeak-ng keeps state between utterances in static variables (a pitch-flutter phase, the noise
    generator, echo buffers), so the same request gives slightly different samples depending on what was
    spoken before. Loading the library anew for every utterance resets all of it: synthesis becomes a
    pure function of its inputs. We load a private copy of the shared object, so that another user of
    libespeak-ng in this process (holding its own reference) cannot keep our copy from unloading.
    """

    def __init__(self, path: str):
        self.lib = lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(_data_path()).encode(), _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            self.close()
            raise RuntimeError(f"espeak_Initialize failed (returned {self.sample_rate}) with data at {_data_path()}.")
        lib.espeak_SetSynthCallback(_CALLBACK)
        lib.espeak_SetParameter(_PARAM_PUNCTUATION, 0, 0)

    def close(self):
        self.lib.espeak_Terminate()
        handle, self.lib = self.lib._handle, None
        if os.name == "nt":
            _ctypes.FreeLibrary(handle)
        else:
            _ctypes.dlclose(handle)


class _Collector:
    """Receives samples and events from espeak's synth callback (one utterance at a time)."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.events: list[tuple[int, int, int, int]] = []

    def __call__(self, wav, num_samples, events):
        if num_samples > 0 and wav:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            self.events.append((event.type, event.text_position, event.length, event.sample))
            i += 1
        return 0


_COLLECTOR = _Collector()
_CALLBACK = _SynthCallback(_COLLECTOR)  # module-level: C keeps only the pointer
_LOCK = threading.Lock()  # espeak-ng is not thread-safe
_PRIVATE_COPY: dict[str, str] = {}  # "path" -> our private copy of the shared library, per process


def _private_library_path(renew: bool = False) -> str:
    """Path of this process's private copy of libespeak-ng (made on first use, removed at exit)."""
    import espeakng_loader

    if renew or _PRIVATE_COPY.get("pid") != str(os.getpid()):
        directory = tempfile.mkdtemp(prefix="mamba_zoo_espeak_")
        source = Path(espeakng_loader.get_library_path())
        path = os.path.join(directory, source.name)
        shutil.copyfile(source, path)
        atexit.register(shutil.rmtree, directory, True)
        _PRIVATE_COPY.update(pid=str(os.getpid()), path=path)
    return _PRIVATE_COPY["path"]


def _still_loaded(path: str) -> bool:
    if not hasattr(os, "RTLD_NOLOAD"):
        return True  # cannot tell: assume the worst and use a new copy next time
    try:
        probe = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return False
    _ctypes.dlclose(probe._handle)
    return True


def _seed_c_rand(seed: int) -> None:
    """Seed the C library's ``rand()`` (process-wide; nothing else in Python uses it)."""
    global _C_LIBRARY
    if _C_LIBRARY is None:
        _C_LIBRARY = ctypes.CDLL(ctypes.util.find_library("msvcrt" if os.name == "nt" else "c"))
        _C_LIBRARY.srand.argtypes = [ctypes.c_uint]
    _C_LIBRARY.srand(int(seed) & 0xFFFFFFFF)


_C_LIBRARY = None


def _synthesize_fresh(text, voice, rate, pitch, pitch_range, volume, word_gap, seed) -> SynthResult:
    encoded = text.encode("utf-8")
    with _LOCK:
        path = _private_library_path()
        engine = _EspeakInstance(path)
        try:
            if engine.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise ValueError(f"espeak-ng could not load voice {voice.name!r}.")
            for param, value in (
                (_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                (_PARAM_VOLUME, volume), (_PARAM_WORDGAP, word_gap),
            ):
                engine.lib.espeak_SetParameter(param, int(value), 0)
            engine.lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
            _seed_c_rand(seed)  # the speechPlayer engine ("klatt 6" variants) draws from the C library's rand()
            _COLLECTOR.chunks, _COLLECTOR.events = [], []
            status = engine.lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            engine.lib.espeak_Synchronize()
            chunks, events, sample_rate = _COLLECTOR.chunks, _COLLECTOR.events, engine.sample_rate
            _COLLECTOR.chunks, _COLLECTOR.events = [], []
        finally:
            engine.close()
        if _still_loaded(path):  # something kept our copy loaded: its state would leak into the next call
            _private_library_path(renew=True)
    if status != 0:
        raise RuntimeError(f"espeak_Synth failed with status {status} for text {text!r}.")
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    words = [(pos, length, sample) for kind, pos, length, sample in events if kind == _EVENT_WORD]
    return SynthResult(
        audio=audio.astype(np.int16, copy=False),
        sampling_rate=sample_rate,
        word_spans=[(pos - 1, length) for pos, length, _ in words],  # text_position counts from 1
        word_starts=[sample for _, _, sample in words],
    )


@lru_cache(maxsize=1)
def espeak_version() -> str:
    """Version string of the bundled libespeak-ng (part of every corpus cache key)."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    return lib.espeak_Info(None).decode()


def synthesize(
    text: str,
    voice: str | Voice = "en-us",
    rate: int = 175,
    pitch: int = 50,
    pitch_range: int = 50,
    volume: int = 100,
    word_gap: int = 0,
    seed: int = 0,
) -> SynthResult:
    """Speak ``text`` with espeak-ng and return int16 samples at 22.05 kHz plus word events.

    Args:
        text: plain UTF-8 text (no SSML); a final ``?`` or ``!`` changes the intonation.
        voice: ``"accent+variant"``, e.g. ``"en-us+f3"`` (see :func:`list_voices`).
        rate: speaking rate in words per minute, 80..450 (175 is espeak's normal rate).
        pitch: base pitch 0..100 (50 normal); relative to the variant's own pitch.
        pitch_range: intonation range 0..100 (0 monotone, 50 normal).
        volume: amplitude 0..200 (100 normal).
        word_gap: extra pause between words, in units of 10 ms.
        seed: seed of espeak's internal noise generator (breathy and Klatt voices use it).

    The same arguments always give the same samples (see the module docstring).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("synthesize() needs a non-empty text string.")
    voice = parse_voice(voice)
    if not RATE_MIN_WPM <= rate <= RATE_MAX_WPM:
        raise ValueError(f"rate={rate} words per minute is outside espeak's range {RATE_MIN_WPM}..{RATE_MAX_WPM}.")
    for name, value, high in (("pitch", pitch, 100), ("pitch_range", pitch_range, 100), ("volume", volume, 200)):
        if not 0 <= value <= high:
            raise ValueError(f"{name}={value} is outside 0..{high}.")
    if word_gap < 0:
        raise ValueError(f"word_gap={word_gap} must be >= 0 (units of 10 ms).")
    return _synthesize_fresh(text, voice, rate, pitch, pitch_range, volume, word_gap, seed)
