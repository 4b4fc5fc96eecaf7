"""The speech synthesis engines a corpus can be rendered with, and how a voice names its engine.

=============  =======================================  ==============================  ===========================
engine         voices (names in corpora)                how it is installed             kind of synthesis
=============  =======================================  ==============================  ===========================
``espeak-ng``  ``"en-us+f3"``: 8 accents x 81 variants  the ``espeakng-loader`` wheel   formant (and Klatt) rules
``festival``   ``"festival:kal_diphone"``,              Debian: ``festival`` and the    LPC diphones cut from
               ``"festival:ked_diphone"``,              ``festvox-*`` voice packages    recordings; HTS statistical
               ``"festival:cmu_us_slt_arctic_hts"``                                     parametric (a woman)
``sam``        ``"sam:elf"``, ... (12 settings)         Node.js + ``sam-js`` from npm   1982 C64 formant tables
``pico``       ``"pico:en-US"``, ``"pico:en-GB"``       ``ttspico`` from PyPI (builds   statistical parametric
               (two women)                              C: gcc, Python headers)         (HMM), SVOX / Android
=============  =======================================  ==============================  ===========================

``python -m mamba_zoo.corpora engines`` prints which are installed here and the commands for the rest.

Reserved for independent evaluation and never offered here: flite (every voice), Piper voices and recordings of
real people that ship inside packages. A model's real test is speech from an engine it never saw.
"""

from __future__ import annotations

from typing import Iterable, Sequence

__all__ = [
    "ENGINES",
    "EngineUnavailableError",
    "check_engines",
    "engine_missing_reason",
    "engine_of",
    "engine_voices",
    "engines_status",
]

ENGINES = ("espeak-ng", "festival", "sam", "pico")
_PREFIXES = {"festival": "festival:", "sam": "sam:", "pico": "pico:"}


class EngineUnavailableError(RuntimeError):
    """A corpus asked for a synthesis engine (or voice) that is not installed here; the message says how to install
    it."""


def engine_of(voice: str) -> str:
    """The engine of a voice name: ``"festival:..."``, ``"sam:..."`` and ``"pico:..."`` name theirs; anything else
    is espeak-ng."""
    for engine, prefix in _PREFIXES.items():
        if voice.startswith(prefix):
            return engine
    return "espeak-ng"


def engine_voice(voice: str) -> str:
    """The voice's name inside its engine (the prefix removed)."""
    engine = engine_of(voice)
    return voice[len(_PREFIXES[engine]):] if engine in _PREFIXES else voice


def check_engine_names(engines: Iterable[str], what: str = "engines") -> list[str]:
    engines = list(engines)
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"{what} contains unknown engines {unknown}; choose from {list(ENGINES)}.")
    if len(set(engines)) != len(engines):
        raise ValueError(f"{what} repeats an engine: {engines}.")
    return engines


def engine_voices(engine: str) -> list[str]:
    """Every voice of ``engine`` as corpora name it (espeak-ng: the default pool of accents x variants)."""
    check_engine_names([engine], "engine")
    if engine == "festival":
        from .festival import FESTIVAL_VOICES

        return [_PREFIXES["festival"] + name for name in FESTIVAL_VOICES]
    if engine == "sam":
        from .sam import SAM_VOICES

        return [_PREFIXES["sam"] + name for name in SAM_VOICES]
    if engine == "pico":
        from .pico import PICO_VOICES

        return [_PREFIXES["pico"] + name for name in PICO_VOICES]
    from .synth import list_voices

    return [voice.name for voice in list_voices()]


def engine_missing_reason(engine: str, voice: str | None = None) -> str | None:
    """Why ``engine`` (or one of its voices, named without prefix) cannot speak here, with the install command;
    ``None`` when it can."""
    check_engine_names([engine], "engine")
    if engine == "festival":
        from .festival import festival_missing_reason

        return festival_missing_reason(voice)
    if engine == "sam":
        from .sam import sam_missing_reason

        return sam_missing_reason(voice)
    if engine == "pico":
        from .pico import pico_missing_reason

        return pico_missing_reason(voice)
    try:
        from .synth import espeak_version

        espeak_version()
    except Exception as error:  # the wheel is missing or its library does not load
        return f"espeak-ng does not load ({error}). Install it with: pip install 'mamba-zoo[audio]'"
    return None


def check_engines(voices: Sequence[str]) -> None:
    """Raise :class:`EngineUnavailableError` naming every engine or voice among ``voices`` that cannot speak here."""
    problems = {}
    for voice in sorted(set(voices)):
        engine = engine_of(voice)
        if engine == "espeak-ng":
            key, reason = engine, engine_missing_reason(engine) if engine not in problems else None
        else:
            key, reason = voice, engine_missing_reason(engine, engine_voice(voice))
        if reason is not None:
            problems[key] = reason
    if problems:
        lines = "\n".join(f"  - {name}: {reason}" for name, reason in problems.items())
        raise EngineUnavailableError(
            f"This corpus needs speech engines that are not installed here:\n{lines}\n"
            "Install them (see `python -m mamba_zoo.corpora engines`), or leave those engines out of the corpus."
        )


def engines_status() -> dict[str, str | None]:
    """``{engine: None if it speaks here else why not (with the install command)}``."""
    return {engine: engine_missing_reason(engine) for engine in ENGINES}
