"""Pipelines are per model, never global.

`import mamba_zoo` changes nothing in transformers' pipeline registry (so every other model keeps transformers' own
pipeline, bugs and all), while each audio family's checkpoint names its pipeline in `config.custom_pipelines`:
`pipeline(task, model=path, trust_remote_code=True)` builds it with or without mamba-zoo installed, and with mamba-zoo
installed `pipeline_class=` builds it without remote code. Those pipelines read WAV paths and bytes with soundfile and
resample `{"raw"/"array", "sampling_rate"}` dicts with scipy: no ffmpeg, no torchaudio (neither is installed here)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import pipeline

from mamba_zoo import (
    MambaASRPipeline,
    MambaCTCConfig,
    MambaCTCProcessor,
    MambaForCTC,
    SoundfileAudioClassificationPipeline,
    SSAMBAConfig,
    SSAMBAFeatureExtractor,
    SSAMBAForAudioClassification,
)
from remote_code_utils import run_without_mamba_zoo

soundfile = pytest.importorskip("soundfile")

# Prints the pipeline registry and how transformers' own audio models' pipelines treat a set of inputs, as JSON.
TRANSFORMERS_AUDIO_PROBE = """
import json, sys, numpy as np
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY, SUPPORTED_TASKS

def name(x):
    return x if isinstance(x, str) else f"{x.__module__}.{x.__qualname__}"

registry = {task: {"impl": name(v["impl"]), "pt": [name(c) for c in v.get("pt", ())], "type": v.get("type")}
            for task, v in sorted(SUPPORTED_TASKS.items())}
assert {t: v["impl"] for t, v in PIPELINE_REGISTRY.supported_tasks.items()} == {
    t: v["impl"] for t, v in SUPPORTED_TASKS.items()}
folder = sys.argv[1]
rng = np.random.default_rng(0)
clip = (0.1 * rng.standard_normal(16000)).astype(np.float32)
inputs = {
    "array": clip,
    "short dict": {"raw": clip[:300], "sampling_rate": 16000},
    "dict at 8 kHz": {"raw": clip[::2].copy(), "sampling_rate": 8000},
    "wav path": folder + "/clip.wav",
    "stereo": np.stack([clip, clip], axis=1),
}
behaviour = {}
for model in ("wav2vec2", "ast"):
    clf = pipeline("audio-classification", model=f"{folder}/{model}")
    behaviour[model] = {"class": name(type(clf))}
    for key, value in inputs.items():
        try:
            out = clf(value)
            behaviour[model][key] = [(o["label"], round(o["score"], 5)) for o in out]
        except Exception as error:
            behaviour[model][key] = f"{type(error).__name__}: {str(error)[:80]}"
asr = pipeline("automatic-speech-recognition", model=f"{folder}/wav2vec2-ctc")
behaviour["wav2vec2-ctc"] = {"class": name(type(asr)), "array": asr(clip)["text"]}
print("PROBE" + json.dumps({"registry": registry, "behaviour": behaviour}))
"""


def _probe(output: str) -> dict:
    return json.loads(next(line for line in output.splitlines() if line.startswith("PROBE"))[len("PROBE"):])


@pytest.fixture(scope="module")
def transformers_audio_models(tmp_path_factory):
    """Tiny random transformers audio classifiers (Wav2Vec2, AST) and a Wav2Vec2 CTC model, saved, plus a WAV file."""
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        ASTForAudioClassification,
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2ForSequenceClassification,
    )

    folder = tmp_path_factory.mktemp("transformers_audio")
    labels = {"id2label": {0: "yes", 1: "no", 2: "up"}, "label2id": {"yes": 0, "no": 1, "up": 2}}
    w2v = dict(vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
               conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=4,
               num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**w2v, **labels)).save_pretrained(folder / "wav2vec2")
    Wav2Vec2FeatureExtractor().save_pretrained(folder / "wav2vec2")
    ASTForAudioClassification(ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=16, num_mel_bins=16, max_length=32, **labels)
                              ).save_pretrained(folder / "ast")
    ASTFeatureExtractor(num_mel_bins=16, max_length=32).save_pretrained(folder / "ast")
    Wav2Vec2ForCTC(Wav2Vec2Config(**w2v)).save_pretrained(folder / "wav2vec2-ctc")
    Wav2Vec2FeatureExtractor().save_pretrained(folder / "wav2vec2-ctc")
    with open(folder / "vocab.json", "w") as f:
        json.dump({"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4, "c": 5, "d": 6, "e": 7}, f)
    Wav2Vec2CTCTokenizer(str(folder / "vocab.json")).save_pretrained(folder / "wav2vec2-ctc")
    soundfile.write(folder / "clip.wav", np.zeros(16000, np.float32), 16000)
    return folder


def test_import_mamba_zoo_changes_no_transformers_pipeline(transformers_audio_models, tmp_path):
    """Before: `import mamba_zoo` replaced the audio-classification and ASR classes for every model (a Wav2Vec2
    classifier then raised SSAMBA's minimum-length error on a short clip and resampled where transformers raises)."""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with_zoo = subprocess.run(
        [sys.executable, "-c", "import mamba_zoo\n" + TRANSFORMERS_AUDIO_PROBE, str(transformers_audio_models)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert with_zoo.returncode == 0, with_zoo.stderr
    without_zoo = run_without_mamba_zoo(
        f"sys.argv = ['-c', {str(transformers_audio_models)!r}]\n" + TRANSFORMERS_AUDIO_PROBE,
        hf_home=str(tmp_path / "hf_home"),
    )
    ours, theirs = _probe(with_zoo.stdout), _probe(without_zoo.stdout)
    assert ours["registry"] == theirs["registry"]
    assert ours["behaviour"] == theirs["behaviour"]
    # the probe really exercised transformers' own classes and their own handling of each input
    behaviour = theirs["behaviour"]
    assert behaviour["wav2vec2"]["class"].endswith(".AudioClassificationPipeline")
    assert behaviour["wav2vec2-ctc"]["class"].endswith(".AutomaticSpeechRecognitionPipeline")
    assert isinstance(behaviour["wav2vec2"]["short dict"], list)  # transformers classifies a 300-sample clip
    assert "torchaudio" in behaviour["wav2vec2"]["dict at 8 kHz"]  # transformers resamples with torchaudio
    # and this very process (mamba_zoo imported) has transformers' registry too
    from transformers.pipelines import SUPPORTED_TASKS

    for task in ("audio-classification", "automatic-speech-recognition"):
        impl = SUPPORTED_TASKS[task]["impl"]
        assert (impl if isinstance(impl, str) else f"{impl.__module__}.{impl.__qualname__}") == \
            theirs["registry"][task]["impl"]


# ---------------------------------------------------------------------------------------------- our checkpoints


def _speech(seconds, rate, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (t * 3 % 1 > 0.4)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def ssamba_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ssamba")
    torch.manual_seed(0)
    config = SSAMBAConfig(hidden_size=32, num_hidden_layers=2, num_mel_bins=32, max_length=48, drop_path_rate=0.0,
                          kernel_backend="reference", id2label={0: "yes", 1: "no", 2: "up"},
                          label2id={"yes": 0, "no": 1, "up": 2})
    model = SSAMBAForAudioClassification(config).eval()
    with torch.no_grad():
        model.classifier.dense.weight.normal_(0, 1.0)
    fe = SSAMBAFeatureExtractor(num_mel_bins=32, max_length=48)
    model.save_pretrained(path)
    fe.save_pretrained(path)
    return path, model, fe


@pytest.fixture(scope="module")
def ctc_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ctc")
    processor = MambaCTCProcessor.from_transcripts(["one two three four five"])
    torch.manual_seed(0)
    model = MambaForCTC(MambaCTCConfig(vocab_size=len(processor.tokenizer), num_mel_bins=80, hidden_size=32,
                                       num_hidden_layers=2, subsampling_conv_channels=8, intermediate_size=64,
                                       state_size=8, kernel_backend="reference")).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, model, processor


def _write_wav(path, audio, rate):
    soundfile.write(path, (audio * 32767).astype(np.int16), rate, subtype="PCM_16")
    as_read, _ = soundfile.read(path, dtype="float32")
    return as_read


def test_checkpoints_name_their_pipeline_per_model(ssamba_checkpoint, ctc_checkpoint):
    ssamba_path, _, _ = ssamba_checkpoint
    ctc_path, _, _ = ctc_checkpoint
    ssamba_config = json.loads((ssamba_path / "config.json").read_text())
    assert ssamba_config["custom_pipelines"] == {"audio-classification": {
        "impl": "feature_extraction_ssamba.SoundfileAudioClassificationPipeline",
        "pt": ["AutoModelForAudioClassification"], "type": "audio"}}
    ctc_config = json.loads((ctc_path / "config.json").read_text())
    ctc_pipeline = ctc_config["custom_pipelines"]["automatic-speech-recognition"]
    assert ctc_pipeline["impl"] == "pipeline_mamba_asr.MambaASRPipeline" and ctc_pipeline["pt"] == ["AutoModelForCTC"]
    # the modules they name travel with the feature extractor / processor
    assert (ssamba_path / "feature_extraction_ssamba.py").exists()
    assert (ctc_path / "pipeline_mamba_asr.py").exists() and (ctc_path / "audio_utils.py").exists()
    # a pipeline is code from the checkpoint: transformers asks for the opt-in instead of silently using its own class
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("audio-classification", model=str(ssamba_path))
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        pipeline("automatic-speech-recognition", model=str(ctc_path))


def test_ssamba_pipeline_reads_wav_bytes_and_dicts_without_ffmpeg(ssamba_checkpoint, tmp_path):
    path, model, fe = ssamba_checkpoint
    clf = pipeline("audio-classification", model=str(path), pipeline_class=SoundfileAudioClassificationPipeline)
    assert type(clf) is SoundfileAudioClassificationPipeline and isinstance(model, type(clf.model))

    def expected(audio):
        with torch.no_grad():
            probs = model(**fe(audio, sampling_rate=16000, return_tensors="pt")).logits.softmax(-1)[0]
        return sorted(((model.config.id2label[i], float(p)) for i, p in enumerate(probs)), key=lambda x: -x[1])

    def scores(out):
        return [(o["label"], o["score"]) for o in out]

    audio_8k = _speech(1.0, 8000, seed=1)
    wav = tmp_path / "stereo_8k.wav"
    stereo = _write_wav(wav, np.stack([audio_8k, 0.5 * audio_8k], axis=1), 8000)
    from mamba_zoo.audio_utils import resample_audio

    by_hand = resample_audio(stereo.mean(axis=1), 8000, 16000)
    for source in (str(wav), wav.read_bytes()):
        np.testing.assert_allclose([s for _, s in scores(clf(source))], [s for _, s in expected(by_hand)], atol=1e-5)
    from_dict = clf({"array": audio_8k, "sampling_rate": 8000})
    np.testing.assert_allclose([s for _, s in scores(from_dict)],
                               [s for _, s in expected(resample_audio(audio_8k, 8000, 16000))], atol=1e-5)
    with pytest.raises(ValueError, match="too short: 300 samples"):
        clf({"raw": np.zeros(300, np.float32), "sampling_rate": 16000})


def test_ctc_pipeline_reads_wav_bytes_and_dicts_without_ffmpeg(ctc_checkpoint, tmp_path):
    """C: transformers' ASR pipeline needs ffmpeg for a WAV path and torchaudio to resample a dict."""
    path, model, processor = ctc_checkpoint
    asr = pipeline("automatic-speech-recognition", model=str(path), pipeline_class=MambaASRPipeline)
    assert asr.type == "ctc" and isinstance(asr.processor, MambaCTCProcessor)
    from mamba_zoo.audio_utils import resample_audio

    def expected(audio):
        with torch.no_grad():
            ids = model(**processor(audio=audio, sampling_rate=16000, return_tensors="pt")).logits.argmax(-1)
        return processor.batch_decode(ids)[0]

    audio_8k = _speech(2.0, 8000, seed=2)
    wav = tmp_path / "clip_8k.wav"
    as_read = _write_wav(wav, audio_8k, 8000)
    by_hand = expected(resample_audio(as_read, 8000, 16000))
    assert by_hand  # the random model says something
    assert asr(str(wav))["text"] == by_hand
    assert asr(wav.read_bytes())["text"] == by_hand
    assert asr({"raw": as_read, "sampling_rate": 8000})["text"] == by_hand
    assert asr({"array": torch.from_numpy(as_read), "sampling_rate": 8000, "path": "x.wav"})["text"] == by_hand
    # a dict's stride is kept, in samples at the model's rate; chunking works on decoded files
    assert isinstance(asr({"raw": as_read, "sampling_rate": 8000, "stride": (800, 800)})["text"], str)
    assert isinstance(asr(str(wav), chunk_length_s=1.0, stride_length_s=0.2)["text"], str)
    with pytest.raises(FileNotFoundError, match="no audio file"):
        asr(str(tmp_path / "missing.wav"))


def test_trust_remote_code_builds_the_checkpoint_pipeline_with_mamba_zoo_installed(ssamba_checkpoint,
                                                                                   ctc_checkpoint, tmp_path):
    """The same call as on a machine without mamba-zoo: the checkpoint's own pipeline module (a fresh process, so
    that the remote modules land in a temporary HF_HOME)."""
    ssamba_path, _, _ = ssamba_checkpoint
    ctc_path, _, _ = ctc_checkpoint
    wav = tmp_path / "clip.wav"
    _write_wav(wav, _speech(1.0, 16000, seed=3), 16000)
    code = textwrap.dedent(f"""
        import mamba_zoo
        from transformers import pipeline
        clf = pipeline("audio-classification", model={str(ssamba_path)!r}, trust_remote_code=True)
        assert type(clf).__name__ == "SoundfileAudioClassificationPipeline", type(clf)
        assert type(clf).__module__.startswith("transformers_modules"), type(clf).__module__
        print("SSAMBA", clf({str(wav)!r})[0]["label"])
        asr = pipeline("automatic-speech-recognition", model={str(ctc_path)!r}, trust_remote_code=True)
        assert type(asr).__name__ == "MambaASRPipeline" and asr.type == "ctc", (type(asr), asr.type)
        print("CTC", repr(asr({str(wav)!r})["text"]))
    """)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "SSAMBA " in result.stdout and "CTC " in result.stdout


def test_remote_code_pipelines_read_wav_without_mamba_zoo_or_ffmpeg(ssamba_checkpoint, ctc_checkpoint, tmp_path):
    ssamba_path, ssamba_model, fe = ssamba_checkpoint
    ctc_path, ctc_model, processor = ctc_checkpoint
    audio_8k = _speech(1.5, 8000, seed=4)
    wav = tmp_path / "clip_8k.wav"
    as_read = _write_wav(wav, audio_8k, 8000)
    from mamba_zoo.audio_utils import resample_audio

    audio = resample_audio(as_read, 8000, 16000)
    with torch.no_grad():
        ids = ctc_model(**processor(audio=audio, sampling_rate=16000, return_tensors="pt")).logits.argmax(-1)
        probs = ssamba_model(**fe(audio, sampling_rate=16000, return_tensors="pt")).logits.softmax(-1)[0]
    text = processor.batch_decode(ids)[0]
    label = ssamba_model.config.id2label[int(probs.argmax())]
    run_without_mamba_zoo(f"""
        import shutil
        import numpy as np
        from transformers import pipeline
        assert shutil.which("ffmpeg") is None or True  # soundfile decodes the file whether or not ffmpeg exists
        asr = pipeline("automatic-speech-recognition", model={str(ctc_path)!r}, trust_remote_code=True)
        assert type(asr).__name__ == "MambaASRPipeline" and asr.type == "ctc", type(asr)
        for source in ({str(wav)!r}, open({str(wav)!r}, "rb").read()):
            assert asr(source)["text"] == {text!r}, (asr(source)["text"], {text!r})
        import soundfile
        samples, rate = soundfile.read({str(wav)!r}, dtype="float32")
        assert asr({{"raw": samples, "sampling_rate": rate}})["text"] == {text!r}
        clf = pipeline("audio-classification", model={str(ssamba_path)!r}, trust_remote_code=True)
        assert type(clf).__name__ == "SoundfileAudioClassificationPipeline", type(clf)
        for source in ({str(wav)!r}, {{"array": samples, "sampling_rate": rate}}):
            top = clf(source)[0]
            assert top["label"] == {label!r} and abs(top["score"] - {float(probs.max())!r}) < 1e-5, top
    """, hf_home=str(tmp_path / "hf_home"))
