"""SVOX Pico, the text-to-speech engine of Android's early years, through the ``ttspico`` package on PyPI.

Pico is a fourth kind of synthesizer beside espeak-ng's formant rules, Festival's diphones / HTS and SAM's 1982
tables: a statistical parametric (HMM) engine with its own text front end (lexicon, letter-to-sound rules,
prosody) and its own signal generation, trained on recordings of two English women (``en-US``: ``lh0``, ``en-GB``:
``kh0``). It speaks 16 kHz, 16-bit mono and is deterministic: the same request gives the same samples.

Install: ``pip install ttspico==0.3.2`` (an sdist that compiles the Apache-2.0 C sources of Pico and ships its
language files; it needs a C compiler and Python's headers, Debian: ``gcc python3-dev``).

Each word is spoken separately (Pico reports no word timings) and the words are joined with a short pause, so word
onsets are exact; the final punctuation is spoken with the last word. Speaking rate and pitch follow espeak's
scale (words per minute, 175 normal; pitch 0..100, 50 normal, +-half an octave) and map onto Pico's ``rate`` and
``pitch`` properties (percent of normal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PICO_VOICES", "PicoRequest", "pico_available", "pico_missing_reason", "synthesize_pico"]

SAMPLING_RATE = 16000
WORD_GAP_SECONDS = 0.06
# voice name (Pico's language) -> who speaks it
PICO_VOICES: dict[str, str] = {
    "en-US": "American English woman (lh0)",
    "en-GB": "British English woman (kh0)",
}
INSTALL_HINT = "pip install ttspico==0.3.2 (compiles C: needs gcc and Python's headers, Debian: gcc python3-dev)"

VOLUME = 50  # percent of Pico's default level, which clips at full scale on some words
TRIM_THRESHOLD = 0.02  # a word's leading / trailing samples below this fraction of its peak are silence
TRIM_MARGIN_SECONDS = 0.02


@dataclass(frozen=True)
class PicoRequest:
    """One utterance: plain lowercase words (final ``.``/``!``/``?`` kept for the intonation of the last word), a
    voice of :data:`PICO_VOICES`, espeak-scale ``rate`` (words per minute, 175 normal) and ``pitch`` (0..100)."""

    text: str
    voice: str
    rate: int = 175
    pitch: int = 50


def pico_missing_reason(voice: str | None = None) -> str | None:
    """Why Pico (or ``voice``) cannot speak here, with the command that fixes it; ``None`` when it can."""
    if voice is not None and voice not in PICO_VOICES:
        return f"unknown Pico voice {voice!r}; known: {sorted(PICO_VOICES)}"
    try:
        import ttspico  # noqa: F401
    except ImportError as error:
        return f"the ttspico package is not installed ({error}). Install it with: {INSTALL_HINT}"
    return None


def pico_available(voice: str | None = None) -> bool:
    return pico_missing_reason(voice) is None


def _new_engine(voice: str, rate: int, pitch: int):
    """A fresh engine for every word: an engine that has spoken carries state into its next utterance (the same
    request then gives other samples), a fresh one is deterministic and costs about 0.3 ms."""
    import ttspico

    engine = ttspico.TtsEngine(voice)
    engine.set_property("volume", VOLUME)
    engine.set_property("rate", rate)
    engine.set_property("pitch", pitch)
    return engine


def _properties(request: PicoRequest) -> tuple[int, int]:
    """Pico's (rate, pitch) in percent of normal for an espeak-scale request."""
    rate = int(np.clip(round(100 * request.rate / 175), 20, 500))
    pitch = int(np.clip(round(100 * 2 ** ((request.pitch - 50) / 100)), 50, 200))
    return rate, pitch


def _speak_word(engine, text: str) -> np.ndarray:
    """Pico's samples for ``text`` with the leading and trailing pause cut to :data:`TRIM_MARGIN_SECONDS`."""
    chunks = []
    engine.speak(text, lambda fmt, audio, fin: chunks.append(audio) or True)
    samples = np.frombuffer(b"".join(chunks), dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > TRIM_THRESHOLD * max(1, int(np.abs(samples).max())))
    if loud.size == 0:
        return samples[:0]
    margin = int(TRIM_MARGIN_SECONDS * SAMPLING_RATE)
    return samples[max(0, loud[0] - margin): loud[-1] + 1 + margin].copy()


def synthesize_pico(requests: list[PicoRequest]) -> list:
    """Speak every request; returns one :class:`~.synth.SynthResult` per request (int16 samples at 16 kHz, word
    onsets in samples).

    Raises:
        RuntimeError: ttspico is missing (the message says how to install it), or Pico spoke nothing.
        ValueError: a text without words.
    """
    from .synth import SynthResult

    results = []
    gap = np.zeros(int(WORD_GAP_SECONDS * SAMPLING_RATE), np.int16)
    for request in requests:
        reason = pico_missing_reason(request.voice)
        if reason is not None:
            raise RuntimeError(f"Pico cannot speak: {reason}")
        words = "".join(c if c.isalpha() or c in " '" else " " for c in request.text).split()
        if not words:
            raise ValueError(f"Pico needs at least one word, got {request.text!r}.")
        final = request.text.rstrip()[-1:] if request.text.rstrip()[-1:] in ".!?" else "."
        rate, pitch = _properties(request)
        pieces, starts, position = [], [], 0
        for k, word in enumerate(words):
            samples = _speak_word(_new_engine(request.voice, rate, pitch), word + (final if k == len(words) - 1 else ","))
            if samples.size == 0:
                raise RuntimeError(f"Pico produced no audio for {word!r} with voice {request.voice!r}.")
            if pieces:
                pieces.append(gap)
                position += len(gap)
            starts.append(position)
            pieces.append(samples)
            position += len(samples)
        results.append(SynthResult(audio=np.concatenate(pieces), sampling_rate=SAMPLING_RATE, word_starts=starts,
                                   word_spans=[]))
    return results
