"""transformers' own common tests for every mamba-zoo family (issue 17), as transformers tests its in-tree models.

Per family: a `ModelTester` with tiny sizes (`prepare_config_and_inputs_for_common`), a `unittest.TestCase` combining
`ModelTesterMixin` over the family's model classes with a `ConfigTester` (`test_config`), and for the audio families
`SequenceFeatureExtractionTestMixin` over the feature extractor. The mixins come from the sdist of the installed
transformers version (`tests/transformers_common.py`; the module is skipped, with the reason, when it cannot be
downloaded).

Generation: transformers' `GenerationTesterMixin` (tests/generation/test_utils.py) is not shipped by any PyPI artefact
of transformers (the sdist holds only the top-level tests/test_*.py files, the wheel no tests), so it cannot be taken
from PyPI at test time. `GenerationChecks` below stands in for it for BlackMamba and MADEON: greedy decoding with the
cache equals decoding without it (tokens and scores), beam search runs, and `max_new_tokens` is respected.

Every skipped common test says why it does not apply (the mixins' own skips say it themselves); tests that fail because
of a bug in our models are marked `xfail(strict=True)` with the bug, to be unmarked when it is fixed.
"""

from __future__ import annotations

import unittest
from unittest import mock

import numpy as np
import pytest
import torch
import transformers_common
from transformers.models.auto import modeling_auto

from mamba_zoo import (
    BlackMambaConfig,
    BlackMambaForCausalLM,
    BlackMambaModel,
    MambaASRConfig,
    MambaASRModel,
    MambaCTCConfig,
    MambaCTCFeatureExtractor,
    MambaCTCModel,
    MambaDecoderOnlyASR,
    MambaForCTC,
    SSAMBAConfig,
    SSAMBAFeatureExtractor,
    SSAMBAForAudioClassification,
    SSAMBAForPreTraining,
    SSAMBAModel,
)

common = transformers_common.load_or_skip()
ModelTesterMixin = common.modeling.ModelTesterMixin
ids_tensor = common.modeling.ids_tensor
floats_tensor = common.modeling.floats_tensor
ConfigTester = common.configuration.ConfigTester
SequenceFeatureExtractionTestMixin = common.sequence_feature_extraction.SequenceFeatureExtractionTestMixin
GenerationTesterMixin = common.generation.GenerationTesterMixin

# ----------------------------------------------------------------------------------------------------------------------
# Shared parts
# ----------------------------------------------------------------------------------------------------------------------


class ZooModelTestMixin(ModelTesterMixin):
    """`ModelTesterMixin` with what every mamba-zoo family shares: no attention, and the Auto-class names of the
    family put into transformers' name tables while a test runs (the mixin looks model classes up there, e.g. to give
    a CTC or causal-LM head its labels; an in-tree model is listed there, ours are registered at runtime instead)."""

    has_attentions = False  # the mixin then skips its attention tests, with its own reason
    # {name of a *_MAPPING_NAMES table in transformers.models.auto.modeling_auto: model class}
    auto_mapping_names: dict = {}
    config_class = None

    def setUp(self):
        model_type = self.config_class.model_type
        for table, model_class in self.auto_mapping_names.items():
            patcher = mock.patch.dict(getattr(modeling_auto, table), {model_type: model_class.__name__})
            patcher.start()
            self.addCleanup(patcher.stop)
        self.model_tester = self.model_tester_class(self)
        self.config_tester = ConfigTester(self, config_class=self.config_class, **self.config_tester_kwargs)

    def test_config(self):
        self.config_tester.run_common_tests()


class GenerationChecks(GenerationTesterMixin):
    """Stand-in for transformers' `GenerationTesterMixin` (not obtainable from PyPI, see the module docstring).

    The model tester gives `generation_inputs()`: the keyword arguments of `generate()` (prompt and, for MADEON, the
    speech prefix)."""

    max_new_tokens = 4

    def _generative_model(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model_class = self.all_generative_model_classes[0]
        torch.manual_seed(0)
        return model_class(config).eval(), config

    def _generate(self, model, inputs, **kwargs):
        with torch.no_grad():
            return model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, min_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=model.config.pad_token_id, **kwargs,
            )

    def test_greedy_generate_cached_equals_uncached(self):
        model, _ = self._generative_model()
        inputs = self.model_tester.generation_inputs()
        cached = self._generate(model, inputs, use_cache=True, return_dict_in_generate=True, output_scores=True)
        uncached = self._generate(model, inputs, use_cache=False, return_dict_in_generate=True, output_scores=True)
        self.assertEqual(cached.sequences.tolist(), uncached.sequences.tolist())
        self.assertEqual(len(cached.scores), self.max_new_tokens)
        for step_cached, step_uncached in zip(cached.scores, uncached.scores):
            torch.testing.assert_close(step_cached, step_uncached, atol=1e-4, rtol=1e-4)

    def test_generate_respects_max_new_tokens(self):
        model, _ = self._generative_model()
        inputs = self.model_tester.generation_inputs()
        prompt_length = inputs["input_ids"].shape[1]
        for max_new_tokens in (1, 3):
            with torch.no_grad():
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                        pad_token_id=model.config.pad_token_id)
            self.assertLessEqual(output.shape[1], prompt_length + max_new_tokens)
            self.assertEqual(output.shape[0], self.model_tester.batch_size)

    def test_beam_search_generate(self):
        model, _ = self._generative_model()
        inputs = self.model_tester.generation_inputs()
        output = self._generate(model, inputs, num_beams=2, num_return_sequences=2, return_dict_in_generate=True,
                                output_scores=True)
        prompt = inputs["input_ids"]
        self.assertEqual(output.sequences.shape, (2 * prompt.shape[0], prompt.shape[1] + self.max_new_tokens))
        # every returned sequence keeps its own prompt
        self.assertEqual(output.sequences[:, : prompt.shape[1]].tolist(), prompt.repeat_interleave(2, 0).tolist())
        self.assertEqual(output.sequences_scores.shape, (2 * prompt.shape[0],))


# ----------------------------------------------------------------------------------------------------------------------
# SSAMBA
# ----------------------------------------------------------------------------------------------------------------------


class SSAMBAModelTester:
    def __init__(self, parent, batch_size=3, hidden_size=32, num_hidden_layers=2, num_mel_bins=16, max_length=32,
                 patch_size=8, num_labels=3, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_mel_bins = num_mel_bins
        self.max_length = max_length
        self.patch_size = patch_size
        self.num_labels = num_labels
        self.is_training = is_training
        # cls token + (16 / 8) x (32 / 8) patches
        self.num_patches = (num_mel_bins // patch_size) * (max_length // patch_size)
        self.seq_length = self.encoder_seq_length = 1 + self.num_patches
        self.mask_patch_count = 3

    def get_config(self):
        return SSAMBAConfig(
            hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers, state_size=8,
            num_mel_bins=self.num_mel_bins, max_length=self.max_length, patch_size=self.patch_size,
            frequency_stride=self.patch_size, time_stride=self.patch_size, drop_path_rate=0.0,
            mask_patch_count=self.mask_patch_count, num_labels=self.num_labels,
        )

    def prepare_config_and_inputs_for_common(self):
        input_values = floats_tensor([self.batch_size, self.max_length, self.num_mel_bins])
        attention_mask = torch.ones(self.batch_size, self.max_length, dtype=torch.long)
        attention_mask[0, -self.patch_size:] = 0  # right padding of the first clip (the row batching tests compare)
        return self.get_config(), {"input_values": input_values, "attention_mask": attention_mask}


class SSAMBAModelTest(ZooModelTestMixin, unittest.TestCase):
    all_model_classes = (SSAMBAModel, SSAMBAForAudioClassification, SSAMBAForPreTraining)
    config_class = SSAMBAConfig
    model_tester_class = SSAMBAModelTester
    config_tester_kwargs = dict(has_text_modality=False, common_properties=["hidden_size", "num_hidden_layers"],
                                hidden_size=32, num_hidden_layers=2)
    auto_mapping_names = {
        "MODEL_MAPPING_NAMES": SSAMBAModel,
        "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES": SSAMBAForAudioClassification,
        "MODEL_FOR_PRETRAINING_MAPPING_NAMES": SSAMBAForPreTraining,
    }
    test_resize_embeddings = False  # spectrogram patches in, no token vocabulary (as transformers' AST test)

    @unittest.skip(reason="SSAMBA's position embeddings are a 2-D patch grid, resized by `resize_position_embeddings("
                   "max_length=, frequency_stride=, ...)` (SSAST fine-tuning, tested in test_modeling_ssamba.py), not "
                   "the 1-D `max_position_embeddings` API this test drives")
    def test_resize_position_vector_embeddings(self):
        pass

    def test_model_get_set_embeddings(self):
        """As transformers' AST test: the input "embeddings" are the patch projection, there is no output vocabulary."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, torch.nn.Linear))

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if model_class is SSAMBAForPreTraining:
            inputs_dict.pop("attention_mask", None)  # pretraining reads whole max_length clips
            # fixed masked patches (sampled at random in forward otherwise), as ViTMAE's tester passes `noise`
            batch = inputs_dict["input_values"].shape[0]
            generator = torch.Generator().manual_seed(0)
            mask_index = torch.stack([
                torch.randperm(self.model_tester.num_patches, generator=generator)[: self.model_tester.mask_patch_count]
                for _ in range(batch)
            ])
            inputs_dict["mask_index"] = mask_index
            inputs_dict["generative_mask_index"] = mask_index
        return inputs_dict


class SSAMBAFeatureExtractionTester:
    """As transformers' `ASTFeatureExtractionTester` (SSAMBAFeatureExtractor is an ASTFeatureExtractor), smaller.
    `max_seq_length - min_seq_length` is not a multiple of `batch_size - 1`, so that the increasing lengths number
    `batch_size`, as the mixin's padding checks expect."""

    def __init__(self, parent, batch_size=4, min_seq_length=400, max_seq_length=1001, feature_size=1,
                 padding_value=0.0, sampling_rate=16000, return_attention_mask=True, do_normalize=True):
        self.parent = parent
        self.batch_size = batch_size
        self.min_seq_length = min_seq_length
        self.max_seq_length = max_seq_length
        self.seq_length_diff = (max_seq_length - min_seq_length) // (batch_size - 1)
        self.feature_size = feature_size
        self.padding_value = padding_value
        self.sampling_rate = sampling_rate
        self.return_attention_mask = return_attention_mask
        self.do_normalize = do_normalize

    def prepare_feat_extract_dict(self):
        return {
            "feature_size": self.feature_size,
            "padding_value": self.padding_value,
            "sampling_rate": self.sampling_rate,
            "return_attention_mask": self.return_attention_mask,
            "do_normalize": self.do_normalize,
        }

    def prepare_inputs_for_common(self, equal_length=False, numpify=False):
        rng = np.random.default_rng(0)
        if equal_length:
            speech_inputs = [rng.uniform(-1, 1, self.max_seq_length).tolist() for _ in range(self.batch_size)]
        else:  # increasing lengths
            speech_inputs = [
                rng.uniform(-1, 1, length * self.feature_size).tolist()
                for length in range(self.min_seq_length, self.max_seq_length, self.seq_length_diff)
            ]
        return [np.asarray(x) for x in speech_inputs] if numpify else speech_inputs


class SSAMBAFeatureExtractionTest(SequenceFeatureExtractionTestMixin, unittest.TestCase):
    feature_extraction_class = SSAMBAFeatureExtractor

    def setUp(self):
        self.feat_extract_tester = SSAMBAFeatureExtractionTester(self)


# ----------------------------------------------------------------------------------------------------------------------
# Mamba-CTC
# ----------------------------------------------------------------------------------------------------------------------


class MambaCTCModelTester:
    def __init__(self, parent, batch_size=3, num_frames=24, num_mel_bins=16, vocab_size=12, hidden_size=32,
                 num_hidden_layers=2, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.num_mel_bins = num_mel_bins
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.is_training = is_training
        self.seq_length = num_frames  # CTC labels (batch, seq_length) of `_prepare_for_class`
        self.encoder_seq_length = -(-num_frames // 4)  # two stride-2 subsampling convolutions

    def get_config(self):
        return MambaCTCConfig(
            vocab_size=self.vocab_size, num_mel_bins=self.num_mel_bins, hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers, subsampling_conv_channels=4, intermediate_size=37, state_size=8,
            mask_time_length=2, mask_time_prob=0.1,
        )

    def prepare_config_and_inputs_for_common(self):
        input_features = floats_tensor([self.batch_size, self.num_frames, self.num_mel_bins])
        attention_mask = torch.ones(self.batch_size, self.num_frames, dtype=torch.long)
        attention_mask[0, -5:] = 0  # right padding of the first sample (the row batching tests compare)
        return self.get_config(), {"input_features": input_features, "attention_mask": attention_mask}


class MambaCTCModelTest(ZooModelTestMixin, unittest.TestCase):
    all_model_classes = (MambaCTCModel, MambaForCTC)
    config_class = MambaCTCConfig
    model_tester_class = MambaCTCModelTester
    config_tester_kwargs = dict(common_properties=["hidden_size", "num_hidden_layers"], hidden_size=32,
                                num_hidden_layers=2, vocab_size=12)
    auto_mapping_names = {"MODEL_MAPPING_NAMES": MambaCTCModel, "MODEL_FOR_CTC_MAPPING_NAMES": MambaForCTC}
    test_resize_embeddings = False  # fbank features in, no token embeddings to resize (as transformers' Wav2Vec2 test)

    @unittest.skip(reason="fbank features in: no token embeddings to get or set (as transformers' Wav2Vec2 test)")
    def test_model_get_set_embeddings(self):
        pass


class MambaCTCFeatureExtractionTester(SSAMBAFeatureExtractionTester):
    """As transformers' `Speech2TextFeatureExtractionTester`: fbank frames `(frames, feature_size)` are padded."""

    def __init__(self, parent, batch_size=4, min_seq_length=40, max_seq_length=101, feature_size=24, **kwargs):
        super().__init__(parent, batch_size=batch_size, min_seq_length=min_seq_length,
                         max_seq_length=max_seq_length, feature_size=feature_size, **kwargs)

    def prepare_inputs_for_common(self, equal_length=False, numpify=False):
        rng = np.random.default_rng(0)
        lengths = ([self.max_seq_length] * self.batch_size if equal_length
                   else range(self.min_seq_length, self.max_seq_length, self.seq_length_diff))
        speech_inputs = [rng.uniform(-1, 1, (length, self.feature_size)).tolist() for length in lengths]
        return [np.asarray(x) for x in speech_inputs] if numpify else speech_inputs


class MambaCTCFeatureExtractionTest(SequenceFeatureExtractionTestMixin, unittest.TestCase):
    feature_extraction_class = MambaCTCFeatureExtractor

    def setUp(self):
        self.feat_extract_tester = MambaCTCFeatureExtractionTester(self)


# ----------------------------------------------------------------------------------------------------------------------
# MADEON (mamba_asr)
# ----------------------------------------------------------------------------------------------------------------------


class MambaASRModelTester:
    """Discrete speech units as the prefix (`speech_input="units"`): units are ids [6, 26) of the shared vocabulary,
    text ids [26, 60), the text starts with `<generatetext>` (5). (Units below the text ids: the common embedding
    resize test shrinks the vocabulary and clamps only `input_ids`.)"""

    def __init__(self, parent, batch_size=3, speech_length=7, seq_length=5, vocab_size=60, hidden_size=32,
                 num_hidden_layers=2, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.speech_length = speech_length
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.is_training = is_training
        # hidden states cover the packed sequence `<sos> <speech> units | text`
        self.encoder_seq_length = 2 + speech_length + seq_length

    def get_config(self):
        return MambaASRConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            expand=2, state_size=8, speech_input="units", num_units=20, unit_token_offset=6,
            speech_prefix="parallel",
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], 34) + 26  # text ids [26, 60)
        input_ids[:, 0] = 5  # <generatetext>
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, -1:] = 0  # right padding of the first row's text...
        input_ids[0, -1:] = 0
        speech_ids = ids_tensor([self.batch_size, self.speech_length], 20) + 6  # units [6, 26)
        speech_attention_mask = torch.ones_like(speech_ids)
        speech_attention_mask[0, -2:] = 0  # ... and of its speech (each sample is packed `[prefix | text]`)
        speech_ids[0, -2:] = 0
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "speech_ids": speech_ids,
                  "speech_attention_mask": speech_attention_mask}
        return self.get_config(), inputs

    def generation_inputs(self):
        """A batch of speech prefixes of different lengths and an unpadded text prompt starting with `<generatetext>`
        (batched ASR decoding; the cached prefill then runs in groups of equal length)."""
        _, inputs = self.prepare_config_and_inputs_for_common()
        input_ids = inputs["input_ids"][:, :3]
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "speech_ids": inputs["speech_ids"], "speech_attention_mask": inputs["speech_attention_mask"]}


class MambaASRModelTest(ZooModelTestMixin, GenerationChecks, unittest.TestCase):
    all_model_classes = (MambaASRModel, MambaDecoderOnlyASR)
    config_class = MambaASRConfig
    model_tester_class = MambaASRModelTester
    config_tester_kwargs = dict(common_properties=["hidden_size", "num_hidden_layers"], hidden_size=32,
                                num_hidden_layers=2, vocab_size=60)
    auto_mapping_names = {
        "MODEL_MAPPING_NAMES": MambaASRModel,
        "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES": MambaDecoderOnlyASR,  # its Auto class (the ASR pipeline's)
        # and what it is: a decoder-only LM over `[speech prefix | text]` (labels, the shift_labels check)
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": MambaDecoderOnlyASR,
    }

    def test_inputs_embeds(self):
        """The mixin skips this test when a class's forward lacks `inputs_embeds`: make such a skip a failure."""
        try:
            super().test_inputs_embeds()
        except unittest.SkipTest as skip:  # the mixin skips when a class's forward lacks `inputs_embeds`
            self.fail(f"skipped: {skip}")


# ----------------------------------------------------------------------------------------------------------------------
# BlackMamba
# ----------------------------------------------------------------------------------------------------------------------


class BlackMambaModelTester:
    def __init__(self, parent, batch_size=3, seq_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2,
                 is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers  # one mamba + one MoE layer
        self.is_training = is_training

    def get_config(self):
        return BlackMambaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            state_size=8, ffn_hidden_size=37, num_experts=4, pad_token_id=1, bos_token_id=0, eos_token_id=0,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, :2] = 0  # left padding of the first row (as in batched generation)
        input_ids[0, :2] = 1
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}

    def generation_inputs(self):
        _, inputs = self.prepare_config_and_inputs_for_common()
        return inputs


class BlackMambaModelTest(ZooModelTestMixin, GenerationChecks, unittest.TestCase):
    all_model_classes = (BlackMambaModel, BlackMambaForCausalLM)
    config_class = BlackMambaConfig
    model_tester_class = BlackMambaModelTester
    config_tester_kwargs = dict(common_properties=["hidden_size", "num_hidden_layers"], hidden_size=32,
                                num_hidden_layers=2, vocab_size=99)
    auto_mapping_names = {
        "MODEL_MAPPING_NAMES": BlackMambaModel,
        "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": BlackMambaForCausalLM,
    }

    @unittest.skip(reason="BlackMamba's SwitchMoE is not transformers' experts interface "
                   "(`@use_experts_implementation`, `_can_record_outputs`); its router logits are returned explicitly, "
                   "as test_output_router_logits_from_config checks")
    def test_moe_models_record_router_logits(self):
        pass
