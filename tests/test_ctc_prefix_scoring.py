"""Joint CTC/attention decoding: CTC prefix scores against brute-force enumeration of alignments, and MADEON's
`generate(ctc_weight=...)` (weight 0 is plain beam search; the joint score telescopes to the right total)."""

import itertools

import numpy as np
import pytest
import torch

from mamba_zoo import MambaASRConfig, MambaDecoderOnlyASR
from mamba_zoo import ctc_prefix_scoring
from mamba_zoo.ctc_prefix_scoring import (
    IMPOSSIBLE,
    CTCPrefixScoreLogitsProcessor,
    CTCPrefixScorer,
    ctc_prefix_processor,
)


def brute_force_log_prob(log_probs: np.ndarray, blank: int, labels: tuple, exact: bool) -> float:
    """log of the total probability of the CTC alignments of `(T, V)` `log_probs` whose collapsed label sequence
    starts with `labels` (`exact`: equals it), by enumerating all V^T alignments."""
    frames, vocab = log_probs.shape
    total = []
    for path in itertools.product(range(vocab), repeat=frames):
        collapsed = [c for j, c in enumerate(path) if c != blank and (j == 0 or c != path[j - 1])]
        if (tuple(collapsed) == labels) if exact else (tuple(collapsed[:len(labels)]) == labels):
            total.append(sum(log_probs[t, c] for t, c in enumerate(path)))
    return float(np.logaddexp.reduce(total)) if total else -np.inf


BLANK, EOS, EXCLUDED = 0, 4, 5  # labels 1, 2, 3; token 5 is never a CTC label


def _score_prefix(scorer: CTCPrefixScorer, prefix: tuple, batch_index: torch.Tensor) -> torch.Tensor:
    """`(rows, V)` scores of `prefix + c`, reached by extending the empty prefix one token at a time (the children's
    forward variables of each step feed the next, as in a search)."""
    r, _ = scorer.empty_prefix(batch_index)
    last = torch.full(batch_index.shape, -1)
    for token in prefix:
        _, children = scorer.extend(r, last, batch_index)
        r, last = children[..., token], torch.full(batch_index.shape, token)
    return scorer.extend(r, last, batch_index)[0]


@pytest.fixture(params=["cpu kernel", "torch loop"])
def scoring_path(request, monkeypatch):
    """Both implementations of the prefix recursion: the numba kernel (CPU) and the loop of torch ops."""
    if request.param == "cpu kernel":
        pytest.importorskip("numba")
    monkeypatch.setattr(ctc_prefix_scoring, "CPU_KERNEL", request.param == "cpu kernel")
    return request.param


@pytest.mark.parametrize("prefix", [(), (1,), (2, 2), (1, 3), (3, 1, 2)])
def test_prefix_scores_equal_brute_force_enumeration(prefix, scoring_path):
    generator = torch.Generator().manual_seed(len(prefix) + 10 * sum(prefix))
    log_probs = torch.log_softmax(2 * torch.randn(2, 5, 6, generator=generator, dtype=torch.float64), -1)
    lengths = torch.tensor([5, 3])
    scorer = CTCPrefixScorer(log_probs, lengths, blank_id=BLANK, eos_token_id=EOS, excluded_token_ids=[EXCLUDED])
    batch_index = torch.tensor([0, 1])
    psi = _score_prefix(scorer, prefix, batch_index)
    for b, length in enumerate(lengths.tolist()):
        x = log_probs[b, :length].numpy()
        for c in (1, 2, 3):
            expected = brute_force_log_prob(x, BLANK, prefix + (c,), exact=False)
            if np.isfinite(expected):
                assert psi[b, c].item() == pytest.approx(expected, abs=1e-4), (b, c)
            else:
                assert psi[b, c].item() <= IMPOSSIBLE / 2
        eos_expected = brute_force_log_prob(x, BLANK, prefix, exact=True)
        if np.isfinite(eos_expected):
            assert psi[b, EOS].item() == pytest.approx(eos_expected, abs=1e-4)
        else:
            assert psi[b, EOS].item() <= IMPOSSIBLE / 2
        assert psi[b, BLANK].item() == IMPOSSIBLE and psi[b, EXCLUDED].item() == IMPOSSIBLE


def test_cpu_kernel_equals_torch_loop(monkeypatch):
    """The numba kernel and the torch loop give the same prefix scores and children's forward variables, for
    hypotheses with and without a last token (repeats included) and utterances of different lengths."""
    pytest.importorskip("numba")
    generator = torch.Generator().manual_seed(7)
    log_probs = torch.log_softmax(3 * torch.randn(2, 23, 9, generator=generator), -1)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([23, 14]), blank_id=0, eos_token_id=8)
    batch_index = torch.tensor([0, 1, 1, 0])
    r, _ = scorer.empty_prefix(batch_index)
    last = torch.full((4,), -1)
    results = {}
    for kernel in (True, False):
        monkeypatch.setattr(ctc_prefix_scoring, "CPU_KERNEL", kernel)
        psi, children = scorer.extend(r, last, batch_index)
        step_r = children[torch.arange(4), ..., torch.tensor([3, 5, 5, 1])]  # (rows, T, 2)
        results[kernel] = (psi, children, scorer.extend(step_r, torch.tensor([3, 5, 5, 1]), batch_index))
    (psi_k, children_k, (psi2_k, children2_k)), (psi_t, children_t, (psi2_t, children2_t)) = results[True], results[False]
    for a, b in ((psi_k, psi_t), (children_k, children_t), (psi2_k, psi2_t), (children2_k, children2_t)):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-3)
    assert psi2_k[:, 1:8].max() > -50  # the second step scores real, possible prefixes


def test_scorer_rejects_bad_lengths_and_shapes():
    log_probs = torch.log_softmax(torch.randn(2, 4, 6), -1)
    with pytest.raises(ValueError, match="lengths"):
        CTCPrefixScorer(log_probs, torch.tensor([4, 5]), BLANK, EOS)
    with pytest.raises(ValueError, match="lengths"):
        CTCPrefixScorer(log_probs, torch.tensor([0, 2]), BLANK, EOS)
    with pytest.raises(ValueError, match=r"\(batch, frames, vocab\)"):
        CTCPrefixScorer(log_probs[0], torch.tensor([4]), BLANK, EOS)
    with pytest.raises(ValueError, match="eos_token_id"):
        CTCPrefixScorer(log_probs, torch.tensor([4, 2]), BLANK, BLANK)
    with pytest.raises(ValueError, match="ctc_weight"):
        ctc_prefix_processor(log_probs, torch.tensor([4, 2]), 1.5, BLANK, EOS)


# ---------------------------------------------------------------------------------------------- MADEON generate()

SMALL_VOCAB, MELS = 10, 12  # special ids 0-5, text labels 6-9: small enough to enumerate CTC alignments


def small_model(seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs = dict(vocab_size=SMALL_VOCAB, hidden_size=32, num_hidden_layers=2, expand=2, state_size=8,
                  speech_input="features", num_mel_bins=MELS, num_subsampling_layers=2, tie_word_embeddings=False,
                  initializer_range=0.3, ctc_loss_weight=0.3, ctc_upsample=2)
    kwargs.update(overrides)
    return MambaDecoderOnlyASR(MambaASRConfig(**kwargs)).eval()


def features(frames=(11, 7, 15), seed=1):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.tensor(frames)
    feats = torch.randn(len(frames), int(frames.max()), MELS, generator=generator)
    mask = (torch.arange(int(frames.max()))[None] < frames[:, None]).long()
    return feats * mask[..., None], mask


@pytest.mark.parametrize("num_beams", [1, 3])
def test_weight_zero_is_plain_decoding(num_beams):
    """The processor with ctc_weight 0 leaves the search exactly as the decoder's own (same hypotheses, same scores)."""
    model = small_model(seed=4)
    feats, mask = features()
    common = dict(input_features=feats, speech_attention_mask=mask, num_beams=num_beams, max_new_tokens=6,
                  do_sample=False, output_scores=True, return_dict_in_generate=True)
    plain = model.generate(**common)
    processor = model.ctc_prefix_processor(0.0, input_features=feats, speech_attention_mask=mask)
    joint = model.generate(**common, logits_processor=[processor])
    assert torch.equal(plain.sequences, joint.sequences)
    for a, b in zip(plain.scores, joint.scores):
        torch.testing.assert_close(a.log_softmax(-1) if num_beams == 1 else a, b.log_softmax(-1) if num_beams == 1 else b)
    if num_beams > 1:
        torch.testing.assert_close(plain.sequences_scores, joint.sequences_scores)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_scores_ctc_from_its_own_prefill(num_beams, monkeypatch):
    """generate(ctc_weight > 0) runs the speech prefix once (its prefill hands the CTC scores to the processor) and
    decodes as a processor built by a separate scoring pass (ctc_prefix_processor) does."""
    model = small_model(seed=6)
    feats, mask = features(frames=(11, 7, 15), seed=8)
    common = dict(input_features=feats, speech_attention_mask=mask, num_beams=num_beams, max_new_tokens=6,
                  do_sample=False, output_scores=True, return_dict_in_generate=True)
    separate = model.ctc_prefix_processor(0.5, input_features=feats, speech_attention_mask=mask)
    reference = model.generate(**common, ctc_weight=0.0, logits_processor=[separate])
    calls = []
    embed = model.model.embed_speech
    monkeypatch.setattr(model.model, "embed_speech", lambda *a, **k: calls.append(1) or embed(*a, **k))
    joint = model.generate(**common, ctc_weight=0.5)
    assert len(calls) == 1
    assert model._ctc_scores_sink is None
    assert torch.equal(joint.sequences, reference.sequences)
    for a, b in zip(joint.scores, reference.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_duplicate_hypotheses_are_extended_once_and_scored_alike(monkeypatch):
    """Rows holding the same hypothesis (the beams of the first step) share one extension and get the scores a
    processor gives them one at a time."""
    generator = torch.Generator().manual_seed(3)
    log_probs = torch.log_softmax(torch.randn(2, 6, SMALL_VOCAB, generator=generator), -1)
    scorer = CTCPrefixScorer(log_probs, torch.tensor([6, 4]), blank_id=0, eos_token_id=2)
    scores = torch.randn(6, SMALL_VOCAB, generator=generator)
    rows = []
    extend = scorer.extend
    monkeypatch.setattr(scorer, "extend", lambda r, last, index: rows.append(len(last)) or extend(r, last, index))
    start = torch.full((6, 1), 5)
    together = CTCPrefixScoreLogitsProcessor(scorer, 0.4)(start, scores)
    assert rows == [2]  # 3 beams x 2 utterances, one empty prefix each
    for i in range(6):
        one = CTCPrefixScorer(log_probs[i // 3:i // 3 + 1], torch.tensor([[6, 4][i // 3]]), blank_id=0, eos_token_id=2)
        alone = CTCPrefixScoreLogitsProcessor(one, 0.4)(start[i:i + 1], scores[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone)


def test_processor_without_scores_says_so():
    processor = CTCPrefixScoreLogitsProcessor(None, 0.5)
    with pytest.raises(RuntimeError, match="no CTC scores"):
        processor(torch.tensor([[3]]), torch.randn(1, SMALL_VOCAB))


def test_joint_greedy_score_telescopes_to_decoder_plus_ctc_prefix_probability():
    """Summed over the steps, the chosen tokens' joint scores are (1 - w) log p_decoder(y) + w log p_ctc(y... | x),
    with the CTC term from brute-force enumeration of the CTC head's alignments (exact sequence once <eos> is out)."""
    model = small_model(seed=2)
    weight = 0.6
    feats, mask = features(frames=(11, 8), seed=5)  # 2 and 1 speech states -> 4 and 2 CTC frames
    for b in range(2):
        length = int(mask[b].sum())
        one = dict(input_features=feats[b:b + 1, :length], speech_attention_mask=mask[b:b + 1, :length])
        out = model.generate(**one, num_beams=1, max_new_tokens=4, do_sample=False, ctc_weight=weight,
                             output_scores=True, return_dict_in_generate=True)
        sequence = out.sequences[0]
        chosen = sequence[1:]
        total = sum(float(step[0, token]) for step, token in zip(out.scores, chosen))
        with torch.no_grad():
            forward = model(input_ids=sequence[None], **one)
        decoder = torch.log_softmax(forward.logits[0, :-1], -1).gather(-1, chosen[:, None]).sum()
        ctc = torch.log_softmax(forward.ctc_logits[0].double(), -1)
        frames = int(model.model.embed_speech(input_features=one["input_features"],
                                              speech_attention_mask=one["speech_attention_mask"])[1][0]) * 2
        labels = tuple(int(t) for t in chosen)
        ended = labels[-1] == model.config.eos_token_id
        ctc_term = brute_force_log_prob(ctc[:frames].numpy(), model.config.pad_token_id,
                                        labels[:-1] if ended else labels, exact=ended)
        assert total == pytest.approx((1 - weight) * float(decoder) + weight * ctc_term, abs=1e-3)


def test_joint_beam_search_batch_equals_one_utterance_at_a_time():
    """Hypotheses are tied to their own utterance's CTC scores, whatever the batch and its padding."""
    model = small_model(seed=7)
    feats, mask = features(frames=(11, 7, 15), seed=3)
    kwargs = dict(num_beams=3, max_new_tokens=5, do_sample=False, ctc_weight=0.5)
    batched = model.generate(input_features=feats, speech_attention_mask=mask, **kwargs)
    for b in range(3):
        length = int(mask[b].sum())
        alone = model.generate(input_features=feats[b:b + 1, :length], speech_attention_mask=mask[b:b + 1, :length],
                               **kwargs)[0]
        row = batched[b, :len(alone)]
        assert torch.equal(row, alone), b
        # finished rows are padded (transformers pads with <eos> when no pad id is set for generation)
        assert torch.isin(batched[b, len(alone):], torch.tensor([model.config.pad_token_id,
                                                                 model.config.eos_token_id])).all()


def test_joint_decoding_follows_a_confident_ctc_head():
    """With ctc_weight 1 the search is CTC prefix beam search: a CTC head that spells 7 8 with certainty is read back
    as `<generatetext> 7 8 <eos>`, whatever the (random) decoder prefers."""
    model = small_model(seed=1)
    with torch.no_grad():
        model.ctc_head.weight.zero_()
        bias = torch.full((2, SMALL_VOCAB), -30.0)
        bias[0, 7], bias[1, 8] = 0.0, 0.0  # each speech state emits "7" then "8"
        model.ctc_head.bias.copy_(bias.reshape(-1))
    feats, mask = features(frames=(7,), seed=0)  # one speech state: CTC frames "7 8"
    out = model.generate(input_features=feats, speech_attention_mask=mask, num_beams=2, max_new_tokens=4,
                         ctc_weight=1.0)
    assert out[0].tolist() == [model.config.generate_text_token_id, 7, 8, model.config.eos_token_id]


def test_config_default_weight_and_clear_errors():
    feats, mask = features(frames=(11,), seed=0)
    no_head = small_model(ctc_loss_weight=0.0)
    with pytest.raises(ValueError, match="CTC head"):
        no_head.generate(input_features=feats, speech_attention_mask=mask, ctc_weight=0.3, max_new_tokens=2)
    with pytest.raises(ValueError, match="ctc_decoding_weight"):
        MambaASRConfig(vocab_size=SMALL_VOCAB, ctc_decoding_weight=0.3)
    with pytest.raises(ValueError, match="ctc_decoding_weight"):
        MambaASRConfig(vocab_size=SMALL_VOCAB, ctc_loss_weight=0.3, ctc_decoding_weight=2.0)
    model = small_model(seed=3)
    with pytest.raises(ValueError, match="ctc_weight"):
        model.generate(input_features=feats, speech_attention_mask=mask, ctc_weight=-0.1, max_new_tokens=2)
    explicit = model.generate(input_features=feats, speech_attention_mask=mask, ctc_weight=0.7, num_beams=2,
                              max_new_tokens=5)
    model.config.ctc_decoding_weight = 0.7  # the config's weight is generate()'s default
    assert torch.equal(model.generate(input_features=feats, speech_attention_mask=mask, num_beams=2,
                                      max_new_tokens=5), explicit)
