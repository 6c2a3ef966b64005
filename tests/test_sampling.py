import numpy as np
import pytest

from tweetgen.sampling import SamplingParams, draw, nucleus_candidates, penalize_repeats, sample, top_k_indices

LOGITS = np.array([[1.0, 3.0, 2.0, 0.5, -1.0]], dtype=np.float32)  # ranks: 1, 2, 0, 3, 4


def draws(params, logits=LOGITS, count=4000, seed=0):
    rng = np.random.default_rng(seed)
    tiled = np.repeat(logits, count, axis=0)
    return sample(tiled, params, rng)


def test_greedy_takes_the_argmax_of_every_row():
    logits = np.array([[0.1, 0.9, 0.3], [5.0, -1.0, 4.9]], dtype=np.float32)
    assert sample(logits, SamplingParams(temperature=0), np.random.default_rng(0)).tolist() == [1, 0]


def test_top_k_keeps_only_the_k_likeliest():
    assert set(draws(SamplingParams(top_k=2)).tolist()) == {1, 2}
    assert set(draws(SamplingParams(top_k=1)).tolist()) == {1}


def test_top_k_zero_keeps_every_token():
    assert set(draws(SamplingParams(top_k=0, temperature=3.0)).tolist()) == {0, 1, 2, 3, 4}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.exp(LOGITS[0]) / np.exp(LOGITS[0]).sum()  # token 1: 0.63, token 2: 0.23, token 0: 0.085
    assert probs[1] < 0.7 < probs[1] + probs[2]
    assert set(draws(SamplingParams(top_k=0, top_p=0.7)).tolist()) == {1, 2}
    assert set(draws(SamplingParams(top_k=0, top_p=0.5)).tolist()) == {1}


def test_min_p_keeps_tokens_at_least_min_p_times_the_likeliest():
    probs = np.exp(LOGITS[0]) / np.exp(LOGITS[0]).sum()  # relative to token 1: 2 -> 0.37, 0 -> 0.14, 3 -> 0.08
    assert set(draws(SamplingParams(top_k=0, min_p=0.3)).tolist()) == {1, 2}
    assert set(draws(SamplingParams(top_k=0, min_p=0.1)).tolist()) == {0, 1, 2}
    assert probs[3] / probs[1] < 0.1 < probs[0] / probs[1]
    # after temperature: at 3.0 the ratios flatten (token 3 is exp(-2.5 / 3) = 0.43 of token 1)
    assert set(draws(SamplingParams(top_k=0, min_p=0.3, temperature=3.0)).tolist()) == {0, 1, 2, 3}
    # with top-k: min-p filters what top-k kept
    assert set(draws(SamplingParams(top_k=2, min_p=0.1)).tolist()) == {1, 2}


@pytest.mark.parametrize("temperature, min_p, top_p", [(1.0, 0.05, 1.0), (0.7, 0.2, 1.0), (1.3, 0.02, 0.9),
                                                        (1.0, 1.0, 1.0)])
def test_min_p_alone_draws_what_filtering_the_whole_vocabulary_draws(temperature, min_p, top_p):
    """min_p_candidates ranks only the tokens min-p can keep; the draws equal those over the whole vocabulary."""
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((4, 20000)) * 3).astype(np.float32)
    logits[1, :50] = 20.0  # ties at the top
    logits[2, 5] = -np.inf
    everything = np.broadcast_to(np.arange(20000), (4, 20000))
    params = SamplingParams(top_k=0, min_p=min_p, top_p=top_p, temperature=temperature)
    for seed in range(25):
        want = draw(everything, logits, params, np.random.default_rng(seed))
        assert sample(logits, params, np.random.default_rng(seed)).tolist() == want.tolist()
    got = draws(params, logits[:1], count=2000)
    scaled = logits[0].astype(np.float64) / temperature
    assert (scaled[got] >= scaled.max() + np.log(min_p) - 1e-9).all()


@pytest.mark.parametrize("spread", [0.3, 3.0, "ties"])
def test_top_p_alone_draws_what_sorting_the_whole_vocabulary_draws(spread):
    """nucleus_candidates finds the nucleus from the likeliest few tokens; the draws are those of ranking all of
    them (ties included: integer logits), for a peaked or a flat row (which needs most of the vocabulary)."""
    rng = np.random.default_rng(3)
    vocab = 20000
    if spread == "ties":
        logits = rng.integers(-6, 6, (4, vocab)).astype(np.float32)
    else:
        logits = (rng.standard_normal((4, vocab)) * spread).astype(np.float32)
    everything = np.broadcast_to(np.arange(vocab), (4, vocab))
    for params in (SamplingParams(top_k=0, top_p=0.9), SamplingParams(top_k=0, top_p=0.5, temperature=0.6),
                   SamplingParams(top_k=0, top_p=0.995, temperature=1.5)):
        for seed in range(25):
            want = draw(everything, logits, params, np.random.default_rng(seed))
            assert sample(logits, params, np.random.default_rng(seed)).tolist() == want.tolist()
    candidates, mass = nucleus_candidates(logits, SamplingParams(top_k=0, top_p=0.5, temperature=0.6))
    if spread != 0.3:  # peaked rows: part of the vocabulary holds half the probability (3.0: a few tokens)
        assert candidates.shape[1] < vocab // (10 if spread == 3.0 else 2) and (mass >= 0.5).all()


def test_top_p_alone_takes_rows_with_infinite_or_nan_logits():
    logits = (np.random.default_rng(5).standard_normal((3, 4000)) * 4).astype(np.float32)
    logits[0, 100:] = -np.inf  # masked tokens: never drawn
    logits[1, 7] = np.nan
    logits[2, 9] = np.inf
    params = SamplingParams(top_k=0, top_p=0.9)
    for seed in range(20):
        assert sample(logits, params, np.random.default_rng(seed))[0] < 100
    assert sample(logits[:1], params, np.random.default_rng(0)).tolist() == draw(
        np.arange(4000)[None, :], logits[:1], params, np.random.default_rng(0)).tolist()


def test_sampling_follows_the_softmax_frequencies():
    got = np.bincount(draws(SamplingParams(top_k=0), count=20000), minlength=5) / 20000
    want = np.exp(LOGITS[0]) / np.exp(LOGITS[0]).sum()
    np.testing.assert_allclose(got, want, atol=0.015)


def test_temperature_sharpens_and_flattens():
    cold = np.mean(draws(SamplingParams(top_k=0, temperature=0.25)) == 1)
    warm = np.mean(draws(SamplingParams(top_k=0, temperature=4.0)) == 1)
    assert cold > 0.95 and warm < 0.4


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    seen = np.array([[False, True, False, False, True]])
    out = penalize_repeats(LOGITS, seen, 2.0)
    np.testing.assert_allclose(out, [[1.0, 1.5, 2.0, 0.5, -2.0]])
    assert penalize_repeats(LOGITS, seen, 1.0) is LOGITS


def test_same_rng_seed_same_draws():
    assert draws(SamplingParams(), seed=7).tolist() == draws(SamplingParams(), seed=7).tolist()
    assert draws(SamplingParams(), seed=7).tolist() != draws(SamplingParams(), seed=8).tolist()


@pytest.mark.parametrize("kwargs, word", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(min_p=-0.1), "min_p"), (dict(min_p=1.5), "min_p"),
    (dict(min_p=True), "min_p")])
def test_settings_out_of_range_are_refused_by_name(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("batch, vocab, k", [(5, 50257, 50), (1, 50257, 1), (3, 8192, 50), (2, 8192, 127),
                                             (2, 8192, 128), (4, 100, 7), (2, 50257, 900)])
def test_top_k_indices_are_the_k_largest(batch, vocab, k):
    rng = np.random.default_rng(vocab + k)
    logits = (rng.standard_normal((batch, vocab)) * 3).astype(np.float32)
    logits[0, -5:] += 50  # the largest logits in the columns past the last whole group
    logits[-1, :: vocab // 7] += 20  # and spread over several groups
    got = top_k_indices(logits, k)
    assert got.shape == (batch, k)
    expected = np.argpartition(logits, vocab - k, axis=-1)[:, vocab - k:]
    assert (np.sort(got, axis=-1) == np.sort(expected, axis=-1)).all()


def test_top_k_indices_break_ties_by_the_lower_index():
    logits = np.zeros((2, 50257), dtype=np.float32)  # every logit ties
    logits[1, 40000:] = -np.inf
    logits[1, 7] = 1.0
    for k in (50, 3000):  # 3000: more than the 785 groups of 64 (the threshold of the k-th largest logit)
        got = np.sort(top_k_indices(logits, k), axis=-1)
        assert (got[0] == np.arange(k)).all()
        assert (got[1] == np.arange(k)).all()  # index 7 (the largest) and the k - 1 lowest of the tied rest


def test_top_k_indices_of_a_row_with_nan_still_returns_k_columns():
    logits = (np.random.default_rng(1).standard_normal((2, 8192)) * 3).astype(np.float32)
    logits[1, ::2] = np.nan
    got = top_k_indices(logits, 50)
    assert got.shape == (2, 50)
    assert (np.sort(got[0]) == np.sort(np.argpartition(logits[0], 8192 - 50)[8192 - 50:])).all()
