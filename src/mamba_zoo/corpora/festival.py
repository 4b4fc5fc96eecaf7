"""The Festival speech synthesis system (Debian ``festival`` + its English voices), driven as a subprocess.

Festival is a different synthesizer from espeak-ng in every stage that shapes how speech sounds: its own
lexicon and letter-to-sound rules, CART duration and intonation models, and two waveform methods:

* **diphone** voices (``kal_diphone``, ``ked_diphone``: two American men, residual-excited LPC diphones cut from
  recordings), Debian packages ``festvox-kallpc16k`` and ``festvox-kdlpc16k``;
* **HTS** voices (``cmu_us_slt_arctic_hts``: an American woman, a statistical parametric voice trained on the
  CMU ARCTIC recordings), Debian package ``festvox-us-slt-hts``.

Install: ``apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts``.

One ``festival --pipe`` process speaks a whole batch of utterances (a process costs about 0.3 s to start), each
written to a WAV file and its word onsets printed from the utterance's ``Word`` relation. Festival has no random
generator in these voices: the same request gives the same samples.

Speaking rate and pitch follow espeak's scale (words per minute, 175 normal; pitch 0..100, 50 normal) so corpora
can draw them the same way for every engine: diphone voices get ``Duration_Stretch`` and a new target F0 mean for
their linear-regression intonation model; HTS voices get hts_engine's speed (``-r``) only, as Debian's Festival
passes hts_engine no pitch shift (pitch variety for them comes from training-time augmentation).
For HTS voices the printed word onsets are Festival's before hts_engine's own durations, rescaled by the speed:
approximate.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["FESTIVAL_VOICES", "FestivalRequest", "festival_available", "festival_missing_reason", "synthesize_festival"]

# voice name -> (Debian package, waveform method, the voice's own mean F0 in Hz)
FESTIVAL_VOICES: dict[str, tuple[str, str, float]] = {
    "kal_diphone": ("festvox-kallpc16k", "diphone", 105.0),
    "ked_diphone": ("festvox-kdlpc16k", "diphone", 105.0),
    "cmu_us_slt_arctic_hts": ("festvox-us-slt-hts", "hts", 170.0),
}
INSTALL_HINT = "apt-get install festival " + " ".join(package for package, _, _ in FESTIVAL_VOICES.values())


@dataclass(frozen=True)
class FestivalRequest:
    """One utterance: ``text`` (plain words, final punctuation allowed), a Festival voice name, espeak-scale
    ``rate`` (words per minute) and ``pitch`` (0..100)."""

    text: str
    voice: str
    rate: int = 175
    pitch: int = 50


@lru_cache(maxsize=None)
def _installed_voices() -> tuple[str, ...]:
    """Voice directories Festival would find (``/usr/share/festival/voices/<language>/<voice>``)."""
    found = []
    for root in (Path("/usr/share/festival/voices"), Path("/usr/local/share/festival/voices")):
        if root.is_dir():
            found.extend(p.name for p in root.glob("*/*") if p.is_dir())
    return tuple(sorted(set(found)))


def festival_missing_reason(voice: str | None = None) -> str | None:
    """Why Festival (or ``voice``) cannot speak here, with the command that fixes it; ``None`` when it can."""
    if shutil.which("festival") is None:
        return f"the `festival` program is not installed. Install it with: {INSTALL_HINT}"
    if voice is not None:
        if voice not in FESTIVAL_VOICES:
            return f"unknown Festival voice {voice!r}; known: {sorted(FESTIVAL_VOICES)}"
        if voice not in _installed_voices():
            return f"the Festival voice {voice!r} is not installed. Install it with: apt-get install " \
                   f"{FESTIVAL_VOICES[voice][0]}"
    return None


def festival_available(voice: str | None = None) -> bool:
    return festival_missing_reason(voice) is None


def _voice_commands(request: FestivalRequest) -> str:
    """Scheme that selects the voice and sets its rate and pitch."""
    _, method, base_f0 = FESTIVAL_VOICES[request.voice]
    speed = request.rate / 175.0
    if method == "hts":  # Debian's Festival passes hts_engine a speed (-r) but no pitch shift: pitch is ignored
        return (f"(voice_{request.voice})\n"
                f"(set! hts_engine_params (append hts_engine_params '((\"-r\" {speed:.4f}))))\n")
    target_f0 = base_f0 * 2 ** ((request.pitch - 50) / 100)  # +-half an octave
    return (f"(voice_{request.voice})\n"
            f"(Parameter.set 'Duration_Stretch {1 / speed:.4f})\n"
            f"(set! int_lr_params '((target_f0_mean {target_f0:.2f}) (target_f0_std {0.14 * target_f0:.2f}) "
            f"(model_f0_mean 170) (model_f0_std 34)))\n")


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise RuntimeError(f"Festival wrote an unexpected WAV ({f.getnchannels()} channels, "
                               f"{8 * f.getsampwidth()} bit); expected 16-bit mono.")
        return np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").copy(), f.getframerate()


def synthesize_festival(requests: list[FestivalRequest], timeout: float = 600.0) -> list:
    """Speak every request in one Festival process; returns one :class:`~.synth.SynthResult` per request (int16
    samples at the voice's own rate, word onsets in samples).

    Raises:
        RuntimeError: Festival or a voice is missing (the message says what to install), or Festival failed.
        ValueError: a text Festival cannot take (quotes or backslashes).
    """
    from .synth import SynthResult

    if not requests:
        return []
    for request in requests:
        reason = festival_missing_reason(request.voice)
        if reason is not None:
            raise RuntimeError(f"Festival cannot speak: {reason}")
        if any(c in request.text for c in '"\\'):
            raise ValueError(f"Festival texts may not contain quotes or backslashes: {request.text!r}")
    with tempfile.TemporaryDirectory(prefix="mamba-zoo-festival-") as tmp:
        script = []
        for i, request in enumerate(requests):
            wav = Path(tmp, f"{i}.wav")
            script.append(
                _voice_commands(request)
                + f'(set! utt1 (Utterance Text "{request.text}"))\n(utt.synth utt1)\n'
                + f'(utt.save.wave utt1 "{wav}" \'riff)\n'
                + f'(mapcar (lambda (w) (format t "WORD {i} %f\\n" (item.feat w "word_start"))) '
                  f"(utt.relation.items utt1 'Word))\n"
            )
        done = subprocess.run(["festival", "--pipe"], input="".join(script), capture_output=True, text=True,
                              timeout=timeout)
        starts: dict[int, list[float]] = {i: [] for i in range(len(requests))}
        for line in done.stdout.splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] == "WORD":
                starts[int(fields[1])].append(float(fields[2]))
        results = []
        for i, request in enumerate(requests):
            wav = Path(tmp, f"{i}.wav")
            if not wav.exists():
                raise RuntimeError(f"Festival did not speak {request.text!r} with voice {request.voice!r} "
                                   f"(exit status {done.returncode}): {done.stderr.strip()[-500:]}")
            audio, rate = _read_wav(wav)
            scale = 175.0 / request.rate if FESTIVAL_VOICES[request.voice][1] == "hts" else 1.0
            results.append(SynthResult(audio=audio, sampling_rate=rate,
                                       word_starts=[int(round(s * scale * rate)) for s in starts[i]],
                                       word_spans=[]))
    return results
