# Copyright 2026 The mamba-zoo authors. Apache-2.0.
"""`pipeline("automatic-speech-recognition")` for mamba-zoo's ASR checkpoints: MambaForCTC and MambaDecoderOnlyASR.

transformers' ASR pipeline treats every model that is not a built-in seq2seq class as CTC. This subclass takes the
generate route for `model_type == "mamba_asr"` (MADEON: speech prefix in, `<generatetext> ... <eos>` out, decoded by
the model's processor) and transformers' own route (CTC greedy or beam decoding, chunking, timestamps) for other
models, MambaForCTC included.

- Inputs (both routes): a mono array at the model's rate, a `{"array" | "raw": ..., "sampling_rate": ...}` dict
  (resampled with scipy), a path to an audio file or its bytes (decoded with soundfile), or a list of those: read by
  `audio_utils.load_audio`, so neither ffmpeg nor torchaudio is needed. Bad audio raises a clear ValueError
  (mamba-zoo's audio-input rule, `audio_utils.validate_audio`).
- Batching: `batch_size=` (speech prefixes are right-padded; the model never lets padding reach a state).
- Decoding (MADEON): `num_beams=`, `max_new_tokens=` and `ctc_weight=` (joint CTC/attention decoding with the model's
  CTC head; default: the config's `ctc_decoding_weight`), or any `generate_kwargs=`.
- Long audio (MADEON): `chunk_length_s=` splits the audio into chunks cut at the quietest 20 ms within
  `stride_length_s` of each boundary (so words are rarely cut); chunks are transcribed independently and joined with
  spaces. CTC models chunk as transformers does.

How it is found (per model, never registered for the task globally): a saved MADEON or MambaForCTC checkpoint names
it in `config.custom_pipelines` and carries this file, so `pipeline("automatic-speech-recognition", model=path,
trust_remote_code=True)` builds it, with or without mamba-zoo installed; with mamba-zoo installed,
`pipeline(..., pipeline_class=MambaASRPipeline)` builds it without remote code.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutomaticSpeechRecognitionPipeline, GenerationConfig

from .audio_utils import load_audio
from .processing_mamba_asr import MambaASRProcessor

MODEL_TYPE = "mamba_asr"


def _is_decoder_only_asr(model) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == MODEL_TYPE


class MambaASRPipeline(AutomaticSpeechRecognitionPipeline):
    """Automatic speech recognition with decoder-only (speech-prefix) models; other models (MambaForCTC) take the
    built-in pipeline's route with mamba-zoo's audio reading (`audio_utils.load_audio`: no ffmpeg, no torchaudio).

    Returns `{"text": str}` per input (plus `"chunks": [{"text", "timestamp": (start_s, end_s)}]` with
    `return_timestamps=True` and chunking).
    """

    _default_generation_config = GenerationConfig(max_new_tokens=128, num_beams=1)
    # `pipeline()` loads the checkpoint's processor (AutoProcessor) with the caller's `trust_remote_code`, if it has
    # one: MADEON's MambaASRProcessor (unit centroids, tokenizer) is then never loaded here without that setting.
    _load_processor = None

    def __init__(self, model, feature_extractor=None, tokenizer=None, decoder=None, device=None, processor=None, **kwargs):
        self._decoder_only_asr = _is_decoder_only_asr(model)
        if self._decoder_only_asr:
            processor = self._resolve_processor(model, processor, feature_extractor, tokenizer)
            feature_extractor = feature_extractor if feature_extractor is not None else processor.feature_extractor
            tokenizer = tokenizer if tokenizer is not None else processor.tokenizer
            self.asr_processor = processor
        elif processor is not None:
            kwargs["processor"] = processor  # other models: hand everything to the built-in pipeline unchanged
        super().__init__(model, feature_extractor=feature_extractor, tokenizer=tokenizer, decoder=decoder,
                         device=device, **kwargs)
        if self._decoder_only_asr:
            self.type = "seq2seq"

    @staticmethod
    def _resolve_processor(model, processor, feature_extractor, tokenizer) -> MambaASRProcessor:
        if processor is not None and not isinstance(processor, str):
            return processor
        source = processor if isinstance(processor, str) else getattr(model.config, "_name_or_path", None)
        if source:
            # Running as a checkpoint's remote code (not from the mamba_zoo package) means the caller passed
            # trust_remote_code=True for that checkpoint: pass it on, so no nested loader asks on stdin.
            trust = {} if __name__.startswith("mamba_zoo.") else {"trust_remote_code": True}
            try:
                return MambaASRProcessor.from_pretrained(source, **trust)
            except (OSError, ValueError, TypeError):
                pass
        if feature_extractor is not None and tokenizer is not None and model.config.speech_input == "features":
            return MambaASRProcessor(feature_extractor, tokenizer, speech_input="features")
        raise ValueError(
            "MambaDecoderOnlyASR needs its MambaASRProcessor: pass processor=MambaASRProcessor.from_pretrained(path) "
            "to pipeline(), or load the model from a directory that holds the processor."
        )

    # ------------------------------------------------------------------------------------------------ parameters

    def _sanitize_parameters(self, chunk_length_s=None, stride_length_s=None, return_timestamps=None, **kwargs):
        if not getattr(self, "_decoder_only_asr", False):
            return super()._sanitize_parameters(chunk_length_s=chunk_length_s, stride_length_s=stride_length_s,
                                                return_timestamps=return_timestamps, **kwargs)
        preprocess_params, forward_params, postprocess_params = {}, {}, {}
        if chunk_length_s is not None:
            if chunk_length_s <= 0:
                raise ValueError(f"chunk_length_s must be positive, got {chunk_length_s}.")
            preprocess_params["chunk_length_s"] = chunk_length_s
        if stride_length_s is not None:
            preprocess_params["stride_length_s"] = stride_length_s
        generate_kwargs = dict(kwargs.pop("generate_kwargs", None) or {})
        for key in ("max_new_tokens", "num_beams", "ctc_weight"):
            if key in kwargs:
                generate_kwargs[key] = kwargs.pop(key)
        if kwargs:
            raise ValueError(f"Unsupported arguments for decoder-only ASR: {sorted(kwargs)}.")
        forward_params["generate_kwargs"] = generate_kwargs
        if return_timestamps is not None:
            postprocess_params["return_timestamps"] = bool(return_timestamps)
        return preprocess_params, forward_params, postprocess_params

    # ------------------------------------------------------------------------------------------------ steps

    def _load_audio(self, inputs) -> np.ndarray:
        """One pipeline input (a path or file bytes, an `{"array" | "raw", "sampling_rate"}` dict, or samples at the
        model's rate) -> a checked float32 `(num_samples,)` array at the model's rate (`audio_utils.load_audio`)."""
        rate = self.feature_extractor.sampling_rate
        audio = load_audio(inputs, rate, owner=type(self).__name__)
        if audio is None:  # a URL or a torchcodec decoder: decoded by transformers
            raise ValueError(
                f"{type(self).__name__} reads audio files, their bytes, {{'array', 'sampling_rate'}} dicts and arrays; "
                f"download URLs first and decode them with soundfile. Got {type(inputs).__name__}."
            )
        return audio

    def _stock_inputs(self, inputs):
        """For transformers' own (CTC) route: decode paths and bytes with soundfile and resample dicts with scipy here
        (transformers would need ffmpeg and torchaudio), keeping a dict's `stride` in samples at the model's rate."""
        rate = self.feature_extractor.sampling_rate
        if isinstance(inputs, dict) and ("raw" in inputs or "array" in inputs) and "sampling_rate" in inputs:
            extra = {k: v for k, v in inputs.items() if k not in ("raw", "array", "path", "sampling_rate")}
            audio = load_audio(inputs, rate, owner=type(self).__name__)
            if extra.get("stride") is not None:
                ratio = rate / int(inputs["sampling_rate"])
                extra["stride"] = tuple(int(round(s * ratio)) for s in extra["stride"])
            return {"raw": audio, "sampling_rate": rate, **extra}
        audio = load_audio(inputs, rate, owner=type(self).__name__)
        return inputs if audio is None else audio

    @staticmethod
    def _chunk_bounds(audio: np.ndarray, chunk: int, search: int, frame: int) -> list[tuple[int, int]]:
        """Split `[0, len)` into pieces of about `chunk` samples, each cut at the quietest `frame` within `search`
        samples before the nominal boundary."""
        bounds, start = [], 0
        while len(audio) - start > chunk:
            low, high = max(start + chunk - search, start + frame), start + chunk
            window = audio[low:high]
            frames = max(len(window) // frame, 1)
            energy = (window[: frames * frame].reshape(frames, -1) ** 2).mean(-1)
            cut = low + int(np.argmin(energy)) * frame + frame // 2
            bounds.append((start, cut))
            start = cut
        bounds.append((start, len(audio)))
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < frame * 5:  # a tiny tail joins the previous chunk
            bounds[-2:] = [(bounds[-2][0], bounds[-1][1])]
        return bounds

    def preprocess(self, inputs, chunk_length_s=0, stride_length_s=None):
        if not self._decoder_only_asr:
            yield from super().preprocess(self._stock_inputs(inputs), chunk_length_s=chunk_length_s,
                                          stride_length_s=stride_length_s)
            return
        audio = self._load_audio(inputs)
        rate = self.feature_extractor.sampling_rate
        if chunk_length_s:
            stride = chunk_length_s / 6 if stride_length_s is None else stride_length_s
            if isinstance(stride, (tuple, list)):
                stride = max(stride)
            bounds = self._chunk_bounds(audio, int(chunk_length_s * rate), max(int(stride * rate), 1), int(0.02 * rate))
        else:
            bounds = [(0, len(audio))]
        for i, (start, end) in enumerate(bounds):
            piece = audio[start:end]
            if len(piece) < int(0.1 * rate):
                piece = np.pad(piece, (0, int(0.1 * rate) - len(piece)))
            features = self.asr_processor(audio=piece, sampling_rate=rate, return_tensors="pt")
            yield {"is_last": i == len(bounds) - 1, "span": torch.tensor([[start / rate, end / rate]]),
                   **features}

    def _forward(self, model_inputs, generate_kwargs=None, **kwargs):
        if not self._decoder_only_asr:
            return super()._forward(model_inputs, generate_kwargs=generate_kwargs, **kwargs)
        is_last = model_inputs.pop("is_last")
        span = model_inputs.pop("span")
        generate_kwargs = self._prepare_generate_kwargs(dict(generate_kwargs or {}))
        tokens = self.model.generate(**model_inputs, **generate_kwargs)
        return {"tokens": tokens, "is_last": is_last, "span": span}

    def postprocess(self, model_outputs, return_timestamps=None, **kwargs):
        if not self._decoder_only_asr:
            return super().postprocess(model_outputs, return_timestamps=return_timestamps, **kwargs)
        texts, spans = [], []
        for outputs in model_outputs:
            tokens = outputs["tokens"]
            texts.append(self.asr_processor.batch_decode(tokens if tokens.ndim == 2 else tokens[None])[0])
            spans.append(tuple(float(x) for x in outputs["span"].reshape(-1)[:2]))
        result = {"text": " ".join(t for t in texts if t)}
        if return_timestamps:
            result["chunks"] = [{"text": t, "timestamp": s} for t, s in zip(texts, spans)]
        return result


__all__ = ["MambaASRPipeline"]
