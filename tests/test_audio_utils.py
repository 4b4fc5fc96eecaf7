"""mamba_zoo.audio_utils: the one audio-input rule (validate_audio / validate_waveform) that the SSAMBA and CTC feature
extractors, the decoder-only ASR processor and the pipelines all apply (checked here family by family with the same
inputs), its PCM scaling, file reading and resampling, per-utterance normalisation, and that the module travels with
saved feature extractors / processors (remote code)."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from transformers.testing_utils import CaptureLogger

from mamba_zoo import audio_utils
from mamba_zoo.audio_utils import (
    check_sampling_rate,
    load_audio,
    normalize_utterance,
    pcm_to_float,
    read_audio_file,
    resample_audio,
    validate_audio,
    validate_waveform,
)


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
    (np.zeros((16, 16000), np.float32), {}, ["(16, 16000)", "at most 8 channels", "list of 1-D clips"]),
    (np.zeros((2, 2, 1600), np.float32), {}, ["must be mono", "(2, 2, 1600)", "list of 1-D clips"]),
    (np.float32(0.5), {}, ["must be mono", "shape ()"]),
    (np.array(["a", "b"]), {}, ["not numeric", "<U1", "integer PCM"]),
    (np.array([True, False]), {}, ["not numeric", "bool"]),
    (np.array([1 + 1j, 0j]), {}, ["not numeric", "complex"]),
    ([0.1, None, 0.2], {}, ["not numeric", "object"]),
    ([[0.1, 0.2], [0.3]], {}, ["could not be read as an array of samples"]),
    (np.zeros(100, np.float32), {"min_samples": 1600, "expected_rate": 16000},
     ["too short: 100 samples (6.2 ms at 16000 Hz)", "at least 1600 samples (100 ms)", "Pad it with zeros"]),
])
def test_bad_input_raises_value_error_naming_problem_and_fix(audio, kwargs, fragments):
    with pytest.raises(ValueError) as error:
        validate_waveform(audio, name="Clip 7", **kwargs)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    if "sampling_rate" not in kwargs:
        assert message.startswith("Clip 7 "), message


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
    with pytest.raises(ValueError, match="too short: 399 samples"):
        validate_waveform(np.zeros(399), min_samples=400)
    assert validate_waveform(np.zeros(1)).shape == (1,)  # default: any non-empty clip
    # the rule's minimum: 0.1 s at the model's rate
    assert audio_utils.min_audio_samples(16000) == 1600 and audio_utils.min_audio_samples(22050) == 2205
    assert validate_audio(np.zeros(1600), 16000, 16000)[0].shape == (1600,)
    with pytest.raises(ValueError, match=r"^Audio is too short: 1599 samples \(99\.9 ms at 16000 Hz\); at least 1600"):
        validate_audio(np.zeros(1599), 16000, 16000)
    # cropping (max_samples) never turns a long clip into a "too short" one
    assert validate_audio(np.zeros(48000), 16000, 16000, max_samples=400)[0].shape == (400,)


def test_the_copies_of_the_rule_are_gone():
    """One helper: the per-family copies (CTC's validate_and_convert_waveform, MADEON's validate_audio, SSAMBA's
    to_float_waveform and its own batch splitting) no longer exist."""
    from mamba_zoo import feature_extraction_mamba_ctc, feature_extraction_ssamba, processing_mamba_asr

    assert not hasattr(feature_extraction_mamba_ctc, "validate_and_convert_waveform")
    assert not hasattr(feature_extraction_ssamba, "to_float_waveform")
    assert not hasattr(feature_extraction_ssamba.SSAMBAFeatureExtractor, "_split_batch")
    assert not hasattr(processing_mamba_asr, "MIN_AUDIO_SECONDS")
    for module in (feature_extraction_mamba_ctc, feature_extraction_ssamba, processing_mamba_asr):
        assert module.validate_audio is validate_audio  # the shared helper, not a copy


# --------------------------------------------------------------------------------------------- one rule, three families

OWNERS = {"ssamba": "SSAMBAFeatureExtractor", "ctc": "MambaCTCFeatureExtractor", "madeon": "MambaASRProcessor"}


@pytest.fixture(scope="module", params=sorted(OWNERS))
def family(request):
    """(name, features(audio, **kwargs) -> np.ndarray (batch, frames, bins)) for each audio family's entry point."""
    from mamba_zoo import MambaASRProcessor, MambaCTCFeatureExtractor, SSAMBAFeatureExtractor

    if request.param == "ssamba":
        fe = SSAMBAFeatureExtractor(num_mel_bins=32, max_length=120)
        return request.param, lambda audio, **kw: fe(audio, return_tensors="np", **kw)["input_values"]
    if request.param == "ctc":
        fe = MambaCTCFeatureExtractor(feature_size=32)
        return request.param, lambda audio, **kw: fe(audio, return_tensors="np", **kw)["input_features"]
    processor = MambaASRProcessor.from_scratch(num_mel_bins=32)
    return request.param, lambda audio, **kw: processor(audio=audio, return_tensors="np", **kw)["input_features"]


def speech(seconds=1.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 300 * t) * (t * 4 % 1 > 0.3)
    return (tone + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def test_multichannel_clip_is_mixed_down_with_a_warning(family):
    """A 2-D array is ONE clip: (samples, channels) and (channels, samples) with few channels are mixed down to mono
    with a warning (before: CTC read (16000, 2) as 16000 two-sample clips, SSAMBA read (2, 16000) as two clips)."""
    name, features = family
    left, right = speech(seed=1), speech(seed=2)
    expected = features(((left.astype(np.float64) + right) / 2).astype(np.float32), sampling_rate=16000)
    for stereo, layout in [(np.stack([left, right], axis=1), "(samples, channels)"),
                           (np.stack([left, right]), "(channels, samples)"),
                           (torch.from_numpy(np.stack([left, right])), "(channels, samples)")]:
        with CaptureLogger(audio_utils.logger) as captured:
            out = features(stereo, sampling_rate=16000)
        assert out.shape == expected.shape, (name, layout, out.shape)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        assert f"{OWNERS[name]}: Audio has shape {tuple(stereo.shape)}, read as {layout} with 2 channels and mixed " \
               "down to mono" in captured.out, captured.out
    with CaptureLogger(audio_utils.logger) as captured:  # one channel: nothing to mix, no warning
        np.testing.assert_array_equal(features(left[None], sampling_rate=16000),
                                      features(left, sampling_rate=16000))
    assert captured.out == ""
    batch = features([left, right], sampling_rate=16000)  # a batch is a list of clips
    assert batch.shape[0] == 2
    with pytest.raises(ValueError, match=r"^Audio has shape \(16, 16000\).*list of 1-D clips"):
        features(np.zeros((16, 16000), np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match=r"^Audio clip 1 must be mono.*\(1, 2, 16000\)"):
        features([left, np.zeros((1, 2, 16000), np.float32)], sampling_rate=16000)


def test_dtypes_are_converted_the_same_way(family):
    name, features = family
    clip = speech()
    reference = features(clip, sampling_rate=16000)
    pcm16 = np.round(clip * 32767).astype(np.int16)
    np.testing.assert_allclose(features(pcm16, sampling_rate=16000),
                               features(pcm16.astype(np.float32) / 32768, sampling_rate=16000), atol=1e-5)
    pcm32 = pcm16.astype(np.int32) << 16
    np.testing.assert_allclose(features(pcm32, sampling_rate=16000),
                               features(pcm16.astype(np.float32) / 32768, sampling_rate=16000), atol=1e-5)
    np.testing.assert_array_equal(features(clip.astype(np.float64), sampling_rate=16000), reference)
    np.testing.assert_array_equal(features(torch.from_numpy(clip).double(), sampling_rate=16000), reference)
    half = clip.astype(np.float16)
    np.testing.assert_array_equal(features(half, sampling_rate=16000),
                                  features(half.astype(np.float32), sampling_rate=16000))
    bf16 = torch.from_numpy(clip).bfloat16()
    np.testing.assert_array_equal(features(bf16, sampling_rate=16000),
                                  features(bf16.float().numpy(), sampling_rate=16000))


@pytest.mark.parametrize("audio, kwargs, message", [
    (np.zeros(0, np.float32), {}, r"^Audio is empty \(0 samples\)"),
    (np.r_[np.zeros(2000), np.nan].astype(np.float32), {}, r"^Audio contains NaN or infinite samples \(1 of 2001"),
    (np.r_[np.zeros(2000), -np.inf], {}, r"^Audio contains NaN or infinite samples"),
    ([np.zeros(2000), np.full(2000, np.nan)], {}, r"^Audio clip 1 contains NaN or infinite samples"),
    (np.zeros(1599, np.float32), {}, r"^Audio is too short: 1599 samples \(99\.9 ms at 16000 Hz\); at least 1600 "
                                     r"samples \(100 ms\) are needed\. Pad it with zeros or drop the clip\."),
    ([np.zeros(2000), np.zeros(400)], {}, r"^Audio clip 1 is too short: 400 samples \(25\.0 ms"),
    (np.array(["a"] * 2000), {}, r"^Audio is not numeric \(dtype <U1\)"),
    ([], {}, r"^Got an empty batch of audio \(no clips\)"),
    ("clip.wav", {}, r"takes audio samples.*got str.*read_audio_file"),
    (np.zeros(16000, np.float32), {"sampling_rate": 8000},
     r"expects audio sampled at 16000 Hz, got sampling_rate=8000 Hz\. Resample first"),
])
def test_bad_audio_gives_the_same_error_in_every_family(family, audio, kwargs, message):
    name, features = family
    kwargs = {"sampling_rate": 16000, **kwargs}
    with pytest.raises(ValueError, match=message):
        features(audio, **kwargs)


def test_missing_sampling_rate_warns_like_transformers_feature_extractors(family):
    from transformers import Wav2Vec2FeatureExtractor
    from transformers.models.wav2vec2 import feature_extraction_wav2vec2

    with CaptureLogger(feature_extraction_wav2vec2.logger) as theirs:
        Wav2Vec2FeatureExtractor()(speech())
    name, features = family
    with CaptureLogger(audio_utils.logger) as ours:
        assert features(speech()).shape[0] == 1
    assert theirs.out.replace("Wav2Vec2FeatureExtractor", OWNERS[name]) == ours.out, (theirs.out, ours.out)
    with CaptureLogger(audio_utils.logger) as stated:
        features(speech(), sampling_rate=16000)
    assert stated.out == ""


def test_silence_is_valid_and_gives_finite_features(family):
    name, features = family
    silent = features(np.zeros(16000, np.float32), sampling_rate=16000)
    assert np.isfinite(silent).all()
    batch = features([np.zeros(16000, np.float32), speech(), np.zeros(1600, np.int16)], sampling_rate=16000)
    assert np.isfinite(batch).all()


def test_normalize_utterance_floors_the_standard_deviation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4)) * 3 + 1
    x[:, 2] = np.log(np.finfo(np.float32).eps)  # a constant bin (digital silence)
    out = normalize_utterance(x.astype(np.float32))
    assert out.dtype == np.float32 and np.all(out[:, 2] == 0)
    np.testing.assert_allclose(out[:, [0, 1, 3]].mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(out[:, [0, 1, 3]].std(0), 1, atol=1e-5)
    np.testing.assert_array_equal(normalize_utterance(x, normalize_vars=False)[:, 2], 0)


# ---------------------------------------------------------------------------------------------- the pipelines' reader


def test_load_audio_reads_files_bytes_dicts_and_arrays_without_ffmpeg(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    clip = speech()
    stereo_8k = np.stack([clip[::2], 0.5 * clip[::2]], axis=1)
    path = tmp_path / "stereo_8k.wav"
    soundfile.write(path, (stereo_8k * 32767).astype(np.int16), 8000, subtype="PCM_16")
    by_hand = resample_audio(pcm_to_float((stereo_8k * 32767).astype(np.int16)).mean(axis=1), 8000, 16000)
    for source in (str(path), path, path.read_bytes(), bytearray(path.read_bytes())):
        out = load_audio(source, 16000)
        assert out.dtype == np.float32 and out.shape == (16000,)
        np.testing.assert_allclose(out, by_hand, atol=1e-6)
    from_dict = load_audio({"array": clip[::2], "sampling_rate": 8000, "path": "x.wav"}, 16000)
    np.testing.assert_allclose(from_dict, resample_audio(clip[::2], 8000, 16000), atol=1e-7)
    from_raw = load_audio({"raw": torch.from_numpy(clip), "sampling_rate": 16000}, 16000)
    np.testing.assert_array_equal(from_raw, clip)
    np.testing.assert_array_equal(load_audio(clip, 16000), clip)
    assert load_audio("https://example.com/clip.wav", 16000) is None  # URLs: transformers' own route
    with pytest.raises(FileNotFoundError, match="no audio file at"):
        load_audio(str(tmp_path / "missing.wav"), 16000, owner="SomePipeline")
    with pytest.raises(ValueError, match=r"needs the samples under \"raw\" \(or \"array\"\)"):
        load_audio({"audio": clip, "sampling_rate": 16000}, 16000)
    with pytest.raises(ValueError, match="^Audio contains NaN"):
        load_audio({"raw": np.full(8000, np.nan), "sampling_rate": 8000}, 16000)
    with pytest.raises(ValueError, match="too short: 800 samples"):  # the minimum is checked at the model's rate
        load_audio({"raw": np.zeros(400), "sampling_rate": 8000}, 16000)
    import shutil

    if shutil.which("ffmpeg") is None:
        with pytest.raises(ValueError, match="could not decode 9 bytes of audio with soundfile.*ffmpeg.*not installed"):
            load_audio(b"not audio", 16000)


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


def test_remote_code_needs_only_numpy_and_audio_utils_is_saved_with_the_extractors(tmp_path):
    """transformers' remote-code loader copies relative imports and requires every non-optional import; audio_utils.py
    must be saved next to each feature extractor / processor that uses it and need nothing beyond numpy."""
    from transformers.dynamic_module_utils import get_imports

    from mamba_zoo import MambaASRProcessor, MambaCTCProcessor, SSAMBAFeatureExtractor

    assert set(get_imports(audio_utils.__file__)) - {"__future__", "io", "logging", "math", "os", "typing"} == {"numpy"}
    source = Path(audio_utils.__file__).read_text()
    for name, obj in [("ssamba", SSAMBAFeatureExtractor(num_mel_bins=32, max_length=48)),
                      ("ctc", MambaCTCProcessor.from_transcripts(["one two"])),
                      ("asr", MambaASRProcessor.from_scratch())]:
        obj.save_pretrained(tmp_path / name)
        saved = tmp_path / name / "audio_utils.py"
        assert saved.exists(), sorted(p.name for p in (tmp_path / name).iterdir())
        assert saved.read_text() == source


def test_long_utterances_are_normalised_in_blocks_with_the_same_result():
    """Past NORMALIZE_BLOCK_FRAMES frames the statistics are summed block by block (memory O(block) for hours of
    audio): the result equals the one-pass float64 formula, constant bins included."""
    from mamba_zoo.audio_utils import CMVN_STD_FLOOR, NORMALIZE_BLOCK_FRAMES, normalize_utterance

    rng = np.random.default_rng(7)
    features = (rng.standard_normal((2 * NORMALIZE_BLOCK_FRAMES + 123, 6)) * 3 + 5).astype(np.float32)
    features[:, 2] = 4.0  # a constant bin
    one_pass = features.astype(np.float64)
    one_pass = one_pass - one_pass.mean(axis=0, keepdims=True)
    one_pass = (one_pass / np.maximum(one_pass.std(axis=0, keepdims=True), CMVN_STD_FLOOR)).astype(np.float32)
    blocked = normalize_utterance(features)
    assert blocked.dtype == np.float32 and blocked.shape == features.shape
    np.testing.assert_allclose(blocked, one_pass, rtol=0, atol=1e-6)
    assert np.all(blocked[:, 2] == 0)
    np.testing.assert_allclose(normalize_utterance(features, normalize_vars=False),
                               (features - features.astype(np.float64).mean(0)).astype(np.float32), atol=1e-5)


def test_copy_false_reads_a_float32_clip_in_place_and_still_checks_it():
    """`copy=False` (feature extractors, which only read): a C-contiguous float32 mono clip comes back as is, so a long
    recording is not held twice; anything else (float64, strided, read-only) is still converted into a new array, and
    NaN / inf samples are still refused with their count and first index."""
    clip = np.linspace(-0.5, 0.5, 2000, dtype=np.float32)
    assert validate_waveform(clip, copy=False) is clip
    assert validate_audio(clip, 16000, 16000, copy=False)[0] is clip
    assert validate_waveform(clip.astype(np.float64), copy=False).dtype == np.float32
    strided = validate_waveform(clip[::2], copy=False)
    assert strided.flags["C_CONTIGUOUS"] and np.array_equal(strided, clip[::2])
    frozen = clip.copy()
    frozen.flags.writeable = False
    thawed = validate_waveform(frozen, copy=False)
    assert thawed.flags.writeable and thawed is not frozen and np.array_equal(thawed, frozen)
    for bad in (np.nan, np.inf, -np.inf):
        broken = clip.copy()
        broken[[700, 900]] = bad
        with pytest.raises(ValueError, match=r"2 of 2000, first at index 700"):
            validate_waveform(broken, copy=False)
    huge = np.full(5000, np.finfo(np.float32).max, dtype=np.float32)  # finite: a float64 sum cannot overflow
    assert validate_waveform(huge, copy=False) is huge
