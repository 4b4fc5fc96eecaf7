"""mamba-zoo: Mamba-family state-space models as first-class Hugging Face transformers models.

Importing `mamba_zoo` registers every model family with transformers' `Auto*` factories, so
`AutoModel*.from_pretrained(...)`, `AutoFeatureExtractor`, `AutoProcessor` and `pipeline(...)` find them.
"""

__version__ = "0.1.0"

from .mamba_layers import (  # noqa: F401
    Mamba2Mixer,
    MambaBlock,
    MambaMixer,
    MambaZooCache,
    RMSNorm,
    RMSNormGated,
    SwitchMoE,
    load_balancing_loss,
)
from .selective_scan import selective_scan_fn, selective_state_update  # noqa: F401
from .causal_conv1d import causal_conv1d_fn, causal_conv1d_update  # noqa: F401
from .ssd import mamba2_state_update, mamba_chunk_scan_combined  # noqa: F401

# Each model family registers itself in its own section below (imports + Auto* registration).

# --- ssamba ---
from transformers import (  # noqa: E402
    AutoConfig as _AutoConfig,
    AutoFeatureExtractor as _AutoFeatureExtractor,
    AutoModel as _AutoModel,
    AutoModelForAudioClassification as _AutoModelForAudioClassification,
    AutoModelForPreTraining as _AutoModelForPreTraining,
)

from .configuration_ssamba import SSAMBA_PRESETS, SSAMBAConfig  # noqa: E402,F401
from .feature_extraction_ssamba import (  # noqa: E402,F401
    SSAMBA_FEATURE_PRESETS,
    SoundfileAudioClassificationPipeline,
    SSAMBAFeatureExtractor,
)
from .modeling_ssamba import (  # noqa: E402,F401
    SSAMBAForAudioClassification,
    SSAMBAForPreTraining,
    SSAMBAModel,
    SSAMBAPreTrainedModel,
)

_AutoConfig.register("ssamba", SSAMBAConfig, exist_ok=True)
_AutoModel.register(SSAMBAConfig, SSAMBAModel, exist_ok=True)
_AutoModelForAudioClassification.register(SSAMBAConfig, SSAMBAForAudioClassification, exist_ok=True)
_AutoModelForPreTraining.register(SSAMBAConfig, SSAMBAForPreTraining, exist_ok=True)
_AutoFeatureExtractor.register(SSAMBAConfig, SSAMBAFeatureExtractor, exist_ok=True)
SSAMBAConfig.register_for_auto_class()
SSAMBAModel.register_for_auto_class("AutoModel")
SSAMBAForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
SSAMBAForPreTraining.register_for_auto_class("AutoModelForPreTraining")
SSAMBAFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")


def _use_soundfile_audio_classification_pipeline() -> None:
    """Let pipeline("audio-classification") decode files with soundfile (no ffmpeg) and resample with scipy; any input
    soundfile cannot decode still goes through transformers' own path."""
    from transformers.pipelines import SUPPORTED_TASKS

    SUPPORTED_TASKS["audio-classification"]["impl"] = SoundfileAudioClassificationPipeline


_use_soundfile_audio_classification_pipeline()
# --- end ssamba ---

# --- mamba_ctc ---
from transformers import (  # noqa: E402
    AutoConfig as _AutoConfig,
    AutoFeatureExtractor as _AutoFeatureExtractor,
    AutoModel as _AutoModel,
    AutoModelForCTC as _AutoModelForCTC,
    AutoProcessor as _AutoProcessor,
    AutoTokenizer as _AutoTokenizer,
    Wav2Vec2CTCTokenizer as _Wav2Vec2CTCTokenizer,
)

from .configuration_mamba_ctc import MambaCTCConfig  # noqa: E402
from .feature_extraction_mamba_ctc import MambaCTCFeatureExtractor  # noqa: E402
from .modeling_mamba_ctc import MambaCTCModel, MambaCTCPreTrainedModel, MambaForCTC  # noqa: E402, F401
from .processing_mamba_ctc import MambaCTCProcessor, build_ctc_vocabulary, normalize_transcript  # noqa: E402, F401

_AutoConfig.register("mamba_ctc", MambaCTCConfig, exist_ok=True)
_AutoModel.register(MambaCTCConfig, MambaCTCModel, exist_ok=True)
_AutoModelForCTC.register(MambaCTCConfig, MambaForCTC, exist_ok=True)
_AutoFeatureExtractor.register(MambaCTCConfig, MambaCTCFeatureExtractor, exist_ok=True)
_AutoProcessor.register(MambaCTCConfig, MambaCTCProcessor, exist_ok=True)
_AutoTokenizer.register(MambaCTCConfig, tokenizer_class=_Wav2Vec2CTCTokenizer, exist_ok=True)
MambaCTCConfig.register_for_auto_class()
MambaCTCModel.register_for_auto_class("AutoModel")
MambaForCTC.register_for_auto_class("AutoModelForCTC")
MambaCTCFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
MambaCTCProcessor.register_for_auto_class("AutoProcessor")
# --- end mamba_ctc ---

# --- mamba_asr ---
from .configuration_mamba_asr import MambaASRConfig  # noqa: F401, E402
from .modeling_mamba_asr import MambaASRModel, MambaDecoderOnlyASR  # noqa: F401, E402
from .pipeline_mamba_asr import MambaASRPipeline  # noqa: F401, E402
from .processing_mamba_asr import MambaASRProcessor, build_tokenizer  # noqa: F401, E402


def _register_mamba_asr():
    """Auto* classes, remote-code auto_map, and the ASR pipeline (MambaASRPipeline takes the generate route for
    decoder-only ASR models and behaves exactly like transformers' pipeline for every other model)."""
    from transformers import AutoConfig, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    AutoConfig.register(MambaASRConfig.model_type, MambaASRConfig, exist_ok=True)
    AutoModel.register(MambaASRConfig, MambaASRModel, exist_ok=True)
    AutoModelForSpeechSeq2Seq.register(MambaASRConfig, MambaDecoderOnlyASR, exist_ok=True)
    AutoProcessor.register(MambaASRConfig, MambaASRProcessor, exist_ok=True)
    MambaASRConfig.register_for_auto_class()
    MambaASRModel.register_for_auto_class("AutoModel")
    MambaDecoderOnlyASR.register_for_auto_class("AutoModelForSpeechSeq2Seq")
    MambaASRProcessor.register_for_auto_class("AutoProcessor")
    task = PIPELINE_REGISTRY.supported_tasks["automatic-speech-recognition"]
    if task["impl"] is not MambaASRPipeline:
        import logging

        pipeline_logger = logging.getLogger("transformers.pipelines.base")
        level = pipeline_logger.level
        pipeline_logger.setLevel(logging.ERROR)  # the "already registered, overwriting" notice is expected here
        try:
            PIPELINE_REGISTRY.register_pipeline(
                "automatic-speech-recognition", pipeline_class=MambaASRPipeline, pt_model=task["pt"],
                default=task.get("default"), type=task.get("type"),
            )
        finally:
            pipeline_logger.setLevel(level)


_register_mamba_asr()
# --- end mamba_asr ---

# --- blackmamba ---
from transformers import AutoConfig as _AutoConfig, AutoModel as _AutoModel, AutoModelForCausalLM as _AutoModelForCausalLM

from .configuration_blackmamba import BLACKMAMBA_PRESETS, BlackMambaConfig  # noqa: F401
from .modeling_blackmamba import BlackMambaForCausalLM, BlackMambaModel, BlackMambaPreTrainedModel  # noqa: F401

_AutoConfig.register("blackmamba", BlackMambaConfig, exist_ok=True)
_AutoModel.register(BlackMambaConfig, BlackMambaModel, exist_ok=True)
_AutoModelForCausalLM.register(BlackMambaConfig, BlackMambaForCausalLM, exist_ok=True)
BlackMambaConfig.register_for_auto_class("AutoConfig")
BlackMambaModel.register_for_auto_class("AutoModel")
BlackMambaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
# --- end blackmamba ---
