"""mamba-zoo: Mamba-family state-space models as first-class Hugging Face transformers models.

Importing `mamba_zoo` registers every model family with transformers' `Auto*` factories (the table `AUTO_CLASSES`
below), so `AutoModel*.from_pretrained(...)`, `AutoFeatureExtractor`, `AutoProcessor` and `pipeline(...)` find them,
and `save_pretrained` writes the `auto_map` that lets a checkpoint load with `trust_remote_code=True`.
"""

__version__ = "0.1.0"

import transformers as _transformers
from transformers import Wav2Vec2CTCTokenizer as _Wav2Vec2CTCTokenizer

# kernels and shared layers
from .causal_conv1d import causal_conv1d_fn, causal_conv1d_update  # noqa: F401
from .mamba_cache import MambaZooCache  # noqa: F401
from .mamba_layers import Mamba2Mixer, MambaBlock, MambaMixer, RMSNorm, RMSNormGated, build_mixer  # noqa: F401
from .moe_layers import SwitchMoE, load_balancing_loss  # noqa: F401
from .selective_scan import selective_scan_fn, selective_state_update  # noqa: F401
from .ssd import mamba2_state_update, mamba_chunk_scan_combined  # noqa: F401

# model families
from .configuration_blackmamba import BLACKMAMBA_PRESETS, BlackMambaConfig  # noqa: F401
from .configuration_mamba_asr import MambaASRConfig  # noqa: F401
from .configuration_mamba_ctc import MambaCTCConfig  # noqa: F401
from .configuration_ssamba import SSAMBA_PRESETS, SSAMBAConfig  # noqa: F401
from .feature_extraction_mamba_ctc import MambaCTCFeatureExtractor  # noqa: F401
from .feature_extraction_ssamba import (  # noqa: F401
    SSAMBA_FEATURE_PRESETS,
    SoundfileAudioClassificationPipeline,
    SSAMBAFeatureExtractor,
)
from .modeling_blackmamba import BlackMambaForCausalLM, BlackMambaModel, BlackMambaPreTrainedModel  # noqa: F401
from .modeling_mamba_asr import MambaASRModel, MambaDecoderOnlyASR  # noqa: F401
from .modeling_mamba_ctc import MambaCTCModel, MambaCTCPreTrainedModel, MambaForCTC  # noqa: F401
from .modeling_ssamba import (  # noqa: F401
    SSAMBAForAudioClassification,
    SSAMBAForAudioFrameClassification,
    SSAMBAForPreTraining,
    SSAMBAModel,
    SSAMBAPreTrainedModel,
)
from .pipeline_mamba_asr import MambaASRPipeline  # noqa: F401
from .processing_mamba_asr import MambaASRProcessor, build_tokenizer  # noqa: F401
from .processing_mamba_ctc import MambaCTCProcessor, build_ctc_vocabulary, normalize_transcript  # noqa: F401

# One row per model family: its config and, per transformers Auto* factory, the class it resolves to.
AUTO_CLASSES = {
    SSAMBAConfig: {
        "AutoModel": SSAMBAModel,
        "AutoModelForAudioClassification": SSAMBAForAudioClassification,
        "AutoModelForAudioFrameClassification": SSAMBAForAudioFrameClassification,
        "AutoModelForPreTraining": SSAMBAForPreTraining,
        "AutoFeatureExtractor": SSAMBAFeatureExtractor,
    },
    MambaCTCConfig: {
        "AutoModel": MambaCTCModel,
        "AutoModelForCTC": MambaForCTC,
        "AutoFeatureExtractor": MambaCTCFeatureExtractor,
        "AutoProcessor": MambaCTCProcessor,
        "AutoTokenizer": _Wav2Vec2CTCTokenizer,
    },
    MambaASRConfig: {
        "AutoModel": MambaASRModel,
        "AutoModelForSpeechSeq2Seq": MambaDecoderOnlyASR,
        "AutoProcessor": MambaASRProcessor,
    },
    BlackMambaConfig: {
        "AutoModel": BlackMambaModel,
        "AutoModelForCausalLM": BlackMambaForCausalLM,
    },
}


def _register_auto_classes() -> None:
    """Register every row of `AUTO_CLASSES` with transformers, and with `register_for_auto_class` so that
    `save_pretrained` writes the remote-code `auto_map` (tokenizers are transformers' own classes: nothing to copy)."""
    for config_class, auto_classes in AUTO_CLASSES.items():
        _transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()
        config_class.family_auto_map = {
            auto_name: f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
            for auto_name, cls in auto_classes.items() if auto_name.startswith("AutoModel")
        }
        for auto_name, cls in auto_classes.items():
            factory = getattr(_transformers, auto_name)
            if auto_name == "AutoTokenizer":
                factory.register(config_class, tokenizer_class=cls, exist_ok=True)
                continue
            factory.register(config_class, cls, exist_ok=True)
            cls.register_for_auto_class(auto_name)


# Pipelines are per model, never registered for a task globally (that would change transformers' pipeline for every
# other model in the process): each audio family's config names its pipeline in `custom_pipelines` (saved with the
# checkpoint), built by `pipeline(task, model=path, trust_remote_code=True)` or, without remote code,
# `pipeline(task, model=path, pipeline_class=SoundfileAudioClassificationPipeline | MambaASRPipeline)`.
_register_auto_classes()
