"""SAM, the Software Automatic Mouth (1982), through the ``sam-js`` package on npm, driven with Node.js.

SAM is a third kind of synthesizer beside espeak-ng's formant voices and Festival's diphone / HTS voices: its own
letter-to-phoneme rules ("reciter") and a phoneme-to-speech routine that builds each sound from three formants in
tables of the C64 era, at 22.05 kHz. Four parameters (speed, pitch, throat, mouth) make its voices; the README of
sam-js lists six presets, and :data:`SAM_VOICES` adds six more settings.

Install (Node.js from Debian, sam-js from npm, into the corpora cache):
``apt-get install nodejs npm && npm install --prefix ~/.cache/mamba_zoo/engines sam-js@0.3.1``
(or point ``$MAMBA_ZOO_SAM_JS`` at ``samjs.common.js``). sam-js is a reverse-engineered port of an abandoned
commercial program with no licence: mamba-zoo never ships it, and uses it only to render training or test audio on
the user's machine.

Each word is spoken separately (SAM reports no word timings) and the words are joined with a short pause, so word
onsets are exact. SAM is deterministic: the same request gives the same samples.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SAM_VOICES", "SamRequest", "sam_available", "sam_missing_reason", "synthesize_sam"]

SAMPLING_RATE = 22050
WORD_GAP_SECONDS = 0.06
# voice -> (speed, pitch, throat, mouth); SAM's speed and pitch run backwards (lower = faster / higher).
SAM_VOICES: dict[str, tuple[int, int, int, int]] = {
    "sam": (72, 64, 128, 128),
    "elf": (72, 64, 110, 160),
    "little-robot": (92, 60, 190, 190),
    "stuffy-guy": (82, 72, 110, 105),
    "little-old-lady": (82, 32, 145, 145),
    "extra-terrestrial": (100, 64, 150, 200),
    "deep": (76, 96, 120, 120),
    "bright": (70, 48, 140, 170),
    "narrow": (74, 70, 160, 110),
    "wide": (74, 58, 100, 180),
    "low-slow": (84, 88, 135, 135),
    "high-quick": (66, 40, 125, 150),
}
INSTALL_HINT = "apt-get install nodejs npm && npm install --prefix ~/.cache/mamba_zoo/engines sam-js@0.3.1"

_SCRIPT = r"""
const SamJs = require(process.argv[process.argv.length - 1]);
const requests = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const fs = require('fs');
requests.forEach((r, i) => {
  const sam = new SamJs({speed: r.speed, pitch: r.pitch, throat: r.throat, mouth: r.mouth});
  const parts = [];
  r.words.forEach((w) => {
    const buf = sam.buf32(w);
    if (!buf) { throw new Error('SAM could not speak ' + JSON.stringify(w)); }
    parts.push(Array.from(buf).length);
    fs.appendFileSync(r.path, Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength));
  });
  process.stdout.write('LENGTHS ' + i + ' ' + parts.join(' ') + '\n');
});
"""


@dataclass(frozen=True)
class SamRequest:
    """One utterance: plain lowercase words (final punctuation is dropped), a voice of :data:`SAM_VOICES`, and
    espeak-scale ``rate`` (words per minute, 175 normal) and ``pitch`` (0..100, 50 normal)."""

    text: str
    voice: str
    rate: int = 175
    pitch: int = 50


def _sam_js_path() -> Path | None:
    candidates = []
    if os.environ.get("MAMBA_ZOO_SAM_JS"):
        candidates.append(Path(os.environ["MAMBA_ZOO_SAM_JS"]).expanduser())
    from .builders import default_cache_dir

    for base in (default_cache_dir().parent / "engines", Path.home() / ".cache" / "mamba_zoo" / "engines"):
        candidates.append(base / "node_modules" / "sam-js" / "dist" / "samjs.common.js")
    return next((path for path in candidates if path.is_file()), None)


def sam_missing_reason(voice: str | None = None) -> str | None:
    """Why SAM (or ``voice``) cannot speak here, with the command that fixes it; ``None`` when it can."""
    if voice is not None and voice not in SAM_VOICES:
        return f"unknown SAM voice {voice!r}; known: {sorted(SAM_VOICES)}"
    if shutil.which("node") is None:
        return f"Node.js (`node`) is not installed. Install SAM with: {INSTALL_HINT}"
    if _sam_js_path() is None:
        return f"the sam-js package is not installed. Install it with: {INSTALL_HINT}"
    return None


def sam_available(voice: str | None = None) -> bool:
    return sam_missing_reason(voice) is None


def _parameters(request: SamRequest) -> dict:
    speed, pitch, throat, mouth = SAM_VOICES[request.voice]
    return {
        "speed": int(np.clip(round(speed * 175 / request.rate), 20, 200)),
        "pitch": int(np.clip(round(pitch * 2 ** (-(request.pitch - 50) / 100)), 10, 200)),  # +-half an octave
        "throat": throat, "mouth": mouth,
    }


def synthesize_sam(requests: list[SamRequest], timeout: float = 600.0) -> list:
    """Speak every request in one Node.js process; returns one :class:`~.synth.SynthResult` per request (int16
    samples at 22.05 kHz, word onsets in samples).

    Raises:
        RuntimeError: Node.js or sam-js is missing (the message says what to install), or SAM failed.
    """
    from .synth import SynthResult

    if not requests:
        return []
    for request in requests:
        reason = sam_missing_reason(request.voice)
        if reason is not None:
            raise RuntimeError(f"SAM cannot speak: {reason}")
    gap = np.zeros(int(WORD_GAP_SECONDS * SAMPLING_RATE), np.float32)
    with tempfile.TemporaryDirectory(prefix="mamba-zoo-sam-") as tmp:
        jobs = []
        for i, request in enumerate(requests):
            words = [w for w in "".join(c if c.isalpha() or c in " '" else " " for c in request.text).split()]
            if not words:
                raise ValueError(f"SAM needs at least one word, got {request.text!r}.")
            jobs.append({"words": words, "path": str(Path(tmp, f"{i}.f32")), **_parameters(request)})
        done = subprocess.run(["node", "-e", _SCRIPT, "--", str(_sam_js_path())], input=json.dumps(jobs),
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"SAM (Node.js) failed with exit status {done.returncode}: {done.stderr.strip()[-500:]}")
        lengths = {}
        for line in done.stdout.splitlines():
            fields = line.split()
            if fields and fields[0] == "LENGTHS":
                lengths[int(fields[1])] = [int(n) for n in fields[2:]]
        results = []
        for i, job in enumerate(jobs):
            samples = np.fromfile(job["path"], dtype="<f4")
            pieces, starts, position, offset = [], [], 0, 0
            for n in lengths[i]:
                if pieces:
                    pieces.append(gap)
                    position += len(gap)
                starts.append(position)
                piece = samples[offset:offset + n].copy()
                piece[:8] = 0.0  # sam-js starts every buffer with a few full-scale samples (a click): drop them
                pieces.append(piece)
                offset += n
                position += n
            audio = np.concatenate(pieces)
            # sam-js' float output is its 8-bit audio, centred, in [-0.5, 0.5]
            audio16 = np.clip(np.round(audio * 65534), -32768, 32767).astype(np.int16)
            results.append(SynthResult(audio=audio16, sampling_rate=SAMPLING_RATE, word_starts=starts,
                                       word_spans=[]))
    return results
