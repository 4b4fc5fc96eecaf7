"""Hub round trip without a network: `push_to_hub` writes what a Hub repo would hold, and a fresh process in which
mamba_zoo cannot be imported loads every family from the Hugging Face cache with `trust_remote_code=True` and gets
identical outputs. Also checks that every model card in model_cards/ carries valid Hub metadata."""

from pathlib import Path

import numpy as np
import pytest
import torch

from hub_utils import local_hub
from remote_code_utils import run_without_mamba_zoo
from zoo_cases import CASES, build

ROOT = Path(__file__).resolve().parents[1]
PUSHED = ["ssamba-classification", "mamba-for-ctc", "mamba-decoder-asr", "blackmamba-causal-lm"]
AUTO_CLASS = {
    "ssamba-classification": "AutoModelForAudioClassification",
    "mamba-for-ctc": "AutoModelForCTC",
    "mamba-decoder-asr": "AutoModelForSpeechSeq2Seq",
    "blackmamba-causal-lm": "AutoModelForCausalLM",
}


def test_push_to_hub_then_load_from_cache_without_mamba_zoo(tmp_path):
    from mamba_zoo import MambaCTCProcessor, SSAMBAFeatureExtractor

    hf_home = tmp_path / "hf_home"
    expected = {}
    with local_hub(hf_home / "hub") as commits:
        for case in [c for c in CASES if c.name in PUSHED]:
            model, inputs = build(case)
            with torch.no_grad():
                output = model(**inputs)
            expected[case.name] = {"inputs": inputs, "logits": output.logits}
            model.push_to_hub(f"mamba-zoo-test/{case.name}")
        feature_extractor = SSAMBAFeatureExtractor(num_mel_bins=32, max_length=48)
        feature_extractor.push_to_hub("mamba-zoo-test/ssamba-classification")
        processor = MambaCTCProcessor.from_transcripts(["one two three"])
        processor.push_to_hub("mamba-zoo-test/mamba-for-ctc")

    files = set().union(*[set(paths) for repo, _, paths in commits if repo.endswith("/ssamba-classification")])
    assert {"config.json", "model.safetensors", "README.md", "preprocessor_config.json"} <= files
    assert any(f.endswith("modeling_ssamba.py") for f in files) and any(f.endswith("mamba_layers.py") for f in files)

    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    torch.save({"expected": expected, "audio": audio}, tmp_path / "expected.pt")
    code = f"""
    import numpy as np, torch, transformers
    data = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=False)
    for name, auto_class in {AUTO_CLASS!r}.items():
        model = getattr(transformers, auto_class).from_pretrained("mamba-zoo-test/" + name, trust_remote_code=True).eval()
        assert "mamba_zoo" not in type(model).__module__, type(model).__module__
        with torch.no_grad():
            logits = model(**data["expected"][name]["inputs"]).logits
        assert torch.allclose(logits, data["expected"][name]["logits"], atol=1e-6, rtol=1e-5), name
    fe = transformers.AutoFeatureExtractor.from_pretrained("mamba-zoo-test/ssamba-classification", trust_remote_code=True)
    features = fe(data["audio"], sampling_rate=16000, return_tensors="pt")["input_values"]
    assert features.shape == (1, 48, 32), features.shape
    processor = transformers.AutoProcessor.from_pretrained("mamba-zoo-test/mamba-for-ctc", trust_remote_code=True)
    assert processor.tokenizer.decode(processor.tokenizer("one two").input_ids) == "one two"
    print("LOADED-ALL")
    """
    result = run_without_mamba_zoo(code, hf_home=str(hf_home))
    assert "LOADED-ALL" in result.stdout


@pytest.mark.parametrize("card", sorted((ROOT / "model_cards").glob("*.md")), ids=lambda p: p.name)
def test_model_cards_have_valid_hub_metadata(card):
    from huggingface_hub import ModelCard

    parsed = ModelCard.load(card)
    data = parsed.data.to_dict()
    assert data.get("library_name") == "transformers"
    assert data.get("pipeline_tag") in {"audio-classification", "automatic-speech-recognition", "text-generation"}
    assert data.get("license")
    assert "mamba" in " ".join(data.get("tags", [])).lower()
    assert len(parsed.text.strip()) > 200, "the card needs usage and measured numbers, not just metadata"


def test_remote_code_runner_reports_a_timeout_with_the_output_so_far(tmp_path):
    code = """
    import sys, time
    print("STARTED", flush=True)
    time.sleep(30)
    """
    with pytest.raises(AssertionError, match=r"still running after 2 s(.|\n)*STARTED"):
        run_without_mamba_zoo(code, hf_home=str(tmp_path), timeout=2)
    # the runner's other contract: mamba_zoo cannot be imported in that process
    with pytest.raises(AssertionError, match="mamba_zoo is hidden"):
        run_without_mamba_zoo("import mamba_zoo", hf_home=str(tmp_path))
