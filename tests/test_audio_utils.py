"""mamba_zoo.audio_utils: the one audio-input check (validate_waveform) shared by the SSAMBA and CTC feature extractors
and the decoder-only ASR processor, its PCM scaling, file reading and resampling, and that the module travels with
saved feature extractors / processors (remote code)."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_zoo import audio_utils
from mamba_zoo.audio_utils import check_sampling_rate, pcm_to_float, read_audio_file, resample_audio, validate_waveform


def test_float_input_becomes_new_contiguous_float32_array():
    audio = np.linspace(-0.5, 0.5, 1000)  # float64
    out = validate_waveform(audio)
    assert out.dtype == np.float32 and out.shape == (1000,) and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, audio.astype(np.float32))
    same_dtype = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
    copy = validate_waveform(same_dtype)
    copy[0] = 7.0
    assert same_dtype[0] == np.float32(-0.5)  # never a view of the caller's buffer
    strided = validate_waveform(same_dtype[::2])
    assert strided.flags["C_CONTIGUOUS"] and np.array_equal(strided, same_dtype[::2])
    np.testing.assert_array_equal(validate_waveform([0.25, -0.25, 0.5]), np.array([0.25, -0.25, 0.5], np.float32))


def test_torch_tensors_with_grad_and_bfloat16_are_accepted():
    tensor = torch.linspace(-1, 1, 64, requires_grad=True)
    np.testing.assert_allclose(validate_waveform(tensor), np.linspace(-1, 1, 64), atol=1e-6)
    half = validate_waveform(torch.tensor([0.5, -0.25, 1.0], dtype=torch.bfloat16))
    assert half.dtype == np.float32 and half.tolist() == [0.5, -0.25, 1.0]


@pytest.mark.parametrize("dtype, values, expected", [
    (np.int16, [-32768, 0, 16384, 32767], [-1.0, 0.0, 0.5, 32767 / 32768]),
    (np.int32, [-(2**31), 2**30, 2**31 - 1], [-1.0, 0.5, (2**31 - 1) / 2**31]),
    (np.uint8, [0, 128, 192, 255], [-1.0, 0.0, 0.5, 127 / 128]),
    (np.uint16, [0, 32768, 65535], [-1.0, 0.0, 32767 / 32768]),  # offset binary, like uint8
    (np.int8, [-128, 64], [-1.0, 0.5]),
])
def test_integer_pcm_scaling(dtype, values, expected):
    out = validate_waveform(np.array(values, dtype=dtype))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.array(expected, dtype=np.float32), rtol=0, atol=1e-7)


@pytest.mark.parametrize("subtype, dtype", [("PCM_16", np.int16), ("PCM_32", np.int32), ("PCM_U8", np.uint8)])
def test_pcm_scaling_matches_soundfile(subtype, dtype):
    """The integer-to-float rule is the one audio readers use: soundfile's own float decoding of the same file."""
    soundfile = pytest.importorskip("soundfile")
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype)
    ints = rng.integers(info.min, int(info.max) + 1, size=2000).astype(dtype)
    buffer = io.BytesIO()
    # soundfile writes int16 / int32 arrays as they are; unsigned 8-bit WAV is written from int16 (x - 128) * 256
    soundfile.write(buffer, ints if dtype != np.uint8 else (ints.astype(np.int16) - 128) * 256, 8000,
                    subtype=subtype, format="WAV")
    buffer.seek(0)
    as_read, _ = soundfile.read(buffer, dtype="float64")
    np.testing.assert_allclose(pcm_to_float(ints), as_read, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(validate_waveform(ints), as_read.astype(np.float32))


@pytest.mark.parametrize("audio, kwargs, fragments", [
    (np.zeros(16000, np.float32), {"sampling_rate": 44100, "expected_rate": 16000},
     ["16000 Hz", "sampling_rate=44100", "Resample first"]),
    (np.zeros(0, np.float32), {}, ["empty (0 samples)", "drop the clip"]),
    (np.array([0.1, 0.2, 0.3, np.nan, 0.0]), {}, ["NaN or infinite", "1 of 5", "first at index 3", "clean or drop"]),
    (np.array([0.1, -np.inf]), {}, ["NaN or infinite", "first at index 1"]),
    (np.zeros((2, 1600), np.float32), {}, ["must be mono", "(2, 1600)", "Mix multi-channel audio down"]),
    (np.float32(0.5), {}, ["must be mono", "shape ()"]),
    (np.array(["a", "b"]), {}, ["not numeric", "<U1", "integer PCM"]),
    (np.array([True, False]), {}, ["not numeric", "bool"]),
    (np.array([1 + 1j, 0j]), {}, ["not numeric", "complex"]),
    ([0.1, None, 0.2], {}, ["not numeric", "object"]),
    ([[0.1, 0.2], [0.3]], {}, ["could not be read as an array of samples"]),
    (np.zeros(100, np.float32), {"min_samples": 400, "min_samples_reason": "one 25 ms analysis window"},
     ["has 100 samples", "shorter than one 25 ms analysis window", "at least 400 samples", "pad it with zeros"]),
])
def test_bad_input_raises_value_error_naming_problem_and_fix(audio, kwargs, fragments):
    with pytest.raises(ValueError) as error:
        validate_waveform(audio, name="Clip 7", **kwargs)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if "sampling_rate" not in kwargs:
        assert message.startswith("Clip 7 ")


def test_sampling_rate_check():
    check_sampling_rate(None, 16000)  # not stated: accepted (callers decide whether to warn)
    check_sampling_rate(np.int64(16000), 16000)
    check_sampling_rate(16000.0, 16000)
    with pytest.raises(ValueError, match="SomeExtractor expects audio sampled at 16000 Hz, got sampling_rate=8000 Hz"):
        check_sampling_rate(8000, 16000, owner="SomeExtractor")
    # validate_waveform only checks the rate when it knows the expected one
    assert validate_waveform(np.zeros(10), sampling_rate=8000).shape == (10,)
    with pytest.raises(ValueError, match="8000"):
        validate_waveform(np.zeros(10), sampling_rate=8000, expected_rate=16000)


def test_minimum_length_is_inclusive():
    assert validate_waveform(np.zeros(400), min_samples=400).shape == (400,)
    with pytest.raises(ValueError, match="has 399 samples"):
        validate_waveform(np.zeros(399), min_samples=400)
    assert validate_waveform(np.zeros(1)).shape == (1,)  # default: any non-empty clip


def test_the_three_entry_points_share_the_check():
    from mamba_zoo.feature_extraction_mamba_ctc import validate_and_convert_waveform
    from mamba_zoo.feature_extraction_ssamba import to_float_waveform
    from mamba_zoo.processing_mamba_asr import validate_audio

    pcm = (np.sin(np.arange(2000) / 7) * 30000).astype(np.int16)
    expected = pcm.astype(np.float32) / 32768
    np.testing.assert_array_equal(to_float_waveform(pcm), expected)
    np.testing.assert_array_equal(validate_and_convert_waveform(pcm), expected)
    np.testing.assert_array_equal(validate_audio(pcm, 16000, 16000)[0], expected)
    nan = np.full(2000, np.nan, np.float32)
    calls = [(lambda: to_float_waveform(nan), "audio"), (lambda: validate_and_convert_waveform(nan, 2), "Audio 2"),
             (lambda: validate_audio([np.zeros(2000), nan], 16000, 16000), "Audio clip 1")]
    for call, name in calls:
        with pytest.raises(ValueError, match=f"^{name} contains NaN or infinite samples"):
            call()
    # each caller keeps its own minimum length: SSAMBA one 25 ms window, the ASR processor 0.1 s, CTC none
    with pytest.raises(ValueError, match="at least 400 samples"):
        to_float_waveform(np.zeros(399))
    with pytest.raises(ValueError, match="at least 1600 samples"):
        validate_audio(np.zeros(1599), None, 16000)
    assert validate_and_convert_waveform(np.zeros(1)).shape == (1,)


def test_resample_audio():
    t8 = np.arange(8000) / 8000
    up = resample_audio(np.sin(2 * np.pi * 440 * t8).astype(np.float32), 8000, 16000)
    assert up.dtype == np.float32 and up.shape == (16000,)
    t16 = np.arange(16000) / 16000
    np.testing.assert_allclose(up[200:-200], np.sin(2 * np.pi * 440 * t16)[200:-200], atol=2e-3)
    down = resample_audio(np.sin(2 * np.pi * 440 * t16), 16000, 8000)
    assert down.shape == (8000,) and down.dtype == np.float32
    assert resample_audio(np.sin(2 * np.pi * 440 * t16), 44100, 16000).shape == (math.ceil(16000 * 16000 / 44100),)
    same = resample_audio(np.arange(5, dtype=np.float64), 16000, 16000)
    assert same.dtype == np.float32 and same.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="positive"):
        resample_audio(np.zeros(10), 0, 16000)


def test_read_audio_file_from_path_and_bytes(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    t = np.arange(8000) / 8000
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.1 * np.ones_like(t)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    from_path = read_audio_file(str(path), 16000)
    from_bytes = read_audio_file(path.read_bytes(), 16000)
    assert from_path.dtype == np.float32 and from_path.shape == (16000,)
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_allclose(from_path, resample_audio((left + right) / 2, 8000, 16000), atol=1e-6)
    native = read_audio_file(str(path), 8000)
    np.testing.assert_allclose(native, (left + right) / 2, atol=1e-6)


def test_public_names_stay_importable_from_their_old_modules():
    from mamba_zoo import feature_extraction_ssamba

    assert feature_extraction_ssamba.read_audio_file is read_audio_file
    assert feature_extraction_ssamba.resample_audio is resample_audio
    for name in feature_extraction_ssamba.__all__:
        assert hasattr(feature_extraction_ssamba, name), name
    from mamba_zoo.feature_extraction_mamba_ctc import validate_and_convert_waveform  # noqa: F401
    from mamba_zoo.processing_mamba_asr import MIN_AUDIO_SECONDS, validate_audio  # noqa: F401


def test_remote_code_needs_only_numpy_and_audio_utils_is_saved_with_the_extractors(tmp_path):
    """transformers' remote-code loader copies relative imports and requires every non-optional import; audio_utils.py
    must be saved next to each feature extractor / processor that uses it and need nothing beyond numpy."""
    from transformers.dynamic_module_utils import get_imports

    from mamba_zoo import MambaASRProcessor, MambaCTCProcessor, SSAMBAFeatureExtractor

    assert set(get_imports(audio_utils.__file__)) - {"__future__", "io", "math", "typing"} == {"numpy"}
    source = Path(audio_utils.__file__).read_text()
    for name, obj in [("ssamba", SSAMBAFeatureExtractor(num_mel_bins=32, max_length=48)),
                      ("ctc", MambaCTCProcessor.from_transcripts(["one two"])),
                      ("asr", MambaASRProcessor.from_scratch())]:
        obj.save_pretrained(tmp_path / name)
        saved = tmp_path / name / "audio_utils.py"
        assert saved.exists(), sorted(p.name for p in (tmp_path / name).iterdir())
        assert saved.read_text() == source
