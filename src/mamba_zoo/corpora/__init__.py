"""Embedded speech corpora that need no download: real synthesized speech from espeak-ng, Festival, SAM and Pico.

Engines (:mod:`.engines`): espeak-ng always (a PyPI wheel); Festival's three English voices (Debian packages),
SAM's twelve (Node.js + npm) and SVOX Pico's two (``ttspico`` from PyPI) when installed: ``python -m mamba_zoo.corpora engines`` says which speak here.
``engines=`` picks the training engines of a corpus, ``heldout_engines=`` adds a ``heldout_engine`` split spoken
only by engines the model never hears in training.

The ``espeakng-loader`` wheel on PyPI bundles the espeak-ng synthesizer (``libespeak-ng``) and its voice
data; :mod:`.synth` drives it through ctypes. espeak-ng speaks at 22.05 kHz; clips are resampled to
16 kHz (``sampling_rate=``) with a polyphase filter.

Corpora (each a ``datasets.DatasetDict`` with ``train`` / ``validation`` / ``test``):

* :func:`load_keywords`: keyword spotting in the shape of Speech Commands v2's 12-class task: ``yes no
  up down left right on off stop go`` + ``_silence_`` (background noise alone) + ``_unknown_`` (other
  words); ``include_digits=True`` adds ``zero``..``nine`` as classes. 1 s clips, balanced classes.
* :func:`load_speakers`: the same sentences spoken by N voices; ``label`` is the voice.
* :func:`load_transcribed`: utterances with transcripts, ``kind="digits"`` ("three one four") or
  ``kind="sentences"`` (a small grammar over a built-in word list), for CTC and decoder-only ASR;
  ``word_starts`` gives each word's onset from espeak's word events.
* :func:`load_text_corpus`: plain text sentences (and "three plus four is seven." arithmetic) for
  language-model demos.
* :func:`load_unlabeled_audio`: the keyword train audio without labels, for self-supervised pretraining.

**Variety.** A voice is an English accent (``en``, ``en-us``, ``en-gb-scotland``, ``en-gb-x-rp``,
``en-gb-x-gbclan``, ``en-gb-x-gbcwmd``, ``en-029``, ``en-us-nyc``) combined with one of 81 timbre variants
(``m1``..``m8``, ``f1``..``f5``, ``klatt``..``klatt6``, ``Alicia``, ``grandpa``, ...): 648 voices. Each clip
also draws a speaking rate, base pitch, intonation range, sentence intonation (. ! ?), peak level,
background noise at an SNR from ``noise_snr_db`` (white / pink / brown / blue noise, mains hum,
fluctuating levels), with probability ``reverb_probability`` a synthetic room (RT60 from ``rt60_range``),
and a random time shift.

**Splits are by voice.** No voice of validation or test is in train; the unit is the timbre variant, so
a held-out variant is never heard in any accent (:func:`split_voices`). The speaker-identification
corpus is the exception, as its label is the voice: there the split is by sentence.

**Deterministic and cached.** A corpus is a pure function of its arguments (including ``seed``): the same
call gives the same bytes, whatever the number of worker processes. The first call renders it (with a
progress bar, in ``num_workers`` processes) and saves it under ``cache_dir`` (default
``$MAMBA_ZOO_CACHE``, else ``~/.cache/mamba_zoo/corpora``); later calls load it from there, memory-mapped,
in milliseconds. The default keyword corpus (200 train + 50 validation + 50 test clips per class, 3600
clips) renders in well under two minutes on 2 cores.

**The audio column and torchcodec.** ``datasets`` 5.x decodes ``Audio`` features with torchcodec, whose
wheels do not load with the CPU build of torch used here. So ``audio`` is stored as a plain struct,
``{"array": List(float32), "sampling_rate": int32}``: the same shape a decoded Hub ``Audio`` column used
to have, readable with no decoder. ``ds[i]["audio"]["array"]`` is a Python list; use
``ds.with_format("numpy")`` (or ``"torch"``) for arrays. Feature extractors (``ASTFeatureExtractor``,
``Wav2Vec2FeatureExtractor``) accept either. To write WAV files use :func:`export_audio_dataset` or the
command line::

    python -m mamba_zoo.corpora keywords --out DIR        # DIR/split/class/id.wav + DIR/manifest.csv
    python -m mamba_zoo.corpora speakers --out DIR        # DIR/split/voice/id.wav
    python -m mamba_zoo.corpora transcribed --out DIR     # DIR/split/id.wav, text in the manifest
    python -m mamba_zoo.corpora text --out DIR            # DIR/split.txt
"""

from .builders import (
    CORPUS_VERSION,
    HELDOUT_SPLIT,
    SILENCE_LABEL,
    SPLITS,
    UNKNOWN_LABEL,
    ClipSpec,
    corpus_voices,
    default_cache_dir,
    load_keywords,
    load_speakers,
    load_text_corpus,
    load_transcribed,
    load_unlabeled_audio,
    render_clip,
    split_voices,
)
from .engines import ENGINES, EngineUnavailableError, engine_of, engine_voices, engines_status
from .export import export_audio_dataset, export_text_dataset
from .synth import ENGLISH_ACCENTS, SynthResult, Voice, default_variants, list_variants, list_voices, parse_voice, synthesize
from .vocabulary import COMMANDS, DIGITS, SPEECH_COMMANDS_AUXILIARY, UNKNOWN_WORDS

__all__ = [
    "COMMANDS",
    "CORPUS_VERSION",
    "DIGITS",
    "ENGINES",
    "ENGLISH_ACCENTS",
    "EngineUnavailableError",
    "HELDOUT_SPLIT",
    "SILENCE_LABEL",
    "SPEECH_COMMANDS_AUXILIARY",
    "SPLITS",
    "UNKNOWN_LABEL",
    "UNKNOWN_WORDS",
    "ClipSpec",
    "SynthResult",
    "Voice",
    "corpus_voices",
    "default_cache_dir",
    "default_variants",
    "engine_of",
    "engine_voices",
    "engines_status",
    "export_audio_dataset",
    "export_text_dataset",
    "list_variants",
    "list_voices",
    "load_keywords",
    "load_speakers",
    "load_text_corpus",
    "load_transcribed",
    "load_unlabeled_audio",
    "parse_voice",
    "render_clip",
    "split_voices",
    "synthesize",
]
