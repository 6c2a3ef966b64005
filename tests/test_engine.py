"""The token-level decoder on the committed tiny models: golden ids, KV cache, batching, stopping."""

import numpy as np
import pytest

from tweetgen.sampling import SamplingParams

from helpers import GOLDEN, PROMPT, run

GREEDY = SamplingParams(temperature=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_ids_match_the_golden_ids(arch, request):
    generator = request.getfixturevalue(arch)
    assert generator.tokenizer.encode("My dream is").ids == PROMPT
    assert run(generator.engine, PROMPT) == [GOLDEN[arch]]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_kv_cache_gives_the_same_ids_as_rerunning_everything(arch, request):
    engine = request.getfixturevalue(arch).engine
    prompt = [50, 357, 295, 249, 223, 381, 395, 396, 368, 370]
    assert run(engine, prompt, max_new_tokens=30)[0] == engine.greedy_without_cache(prompt, 30)


def test_llama_export_has_grouped_query_kv_heads(llama):
    assert llama.engine.spec.kv_heads == 2 and llama.folder.config["num_attention_heads"] == 4


def test_batched_rows_match_single_greedy_runs(gpt2):
    rows = run(gpt2.engine, PROMPT, n=4)
    assert rows == [GOLDEN["gpt2"]] * 4


def test_batched_sampling_differs_between_rows_and_repeats_with_the_seed(gpt2):
    params = SamplingParams(temperature=1.0, top_k=0)
    first = run(gpt2.engine, PROMPT, n=5, params=params, seed=3)
    assert len({tuple(r) for r in first}) > 1
    assert run(gpt2.engine, PROMPT, n=5, params=params, seed=3) == first


def test_a_row_stops_at_end_of_text(gpt2):
    eos = int(gpt2.engine.eos_token_ids[0])
    params = SamplingParams(temperature=1.0, top_k=0)
    for seed in range(40):  # find a seed where some row ends early; the random model draws eos now and then
        rows = run(gpt2.engine, PROMPT, n=8, max_new_tokens=40, params=params, seed=seed)
        ended = [r for r in rows if eos in r]
        if ended:
            break
    assert ended, "no row drew end-of-text in 40 seeds"
    assert all(r[-1] == eos and r.count(eos) == 1 for r in ended)
    assert any(len(r) == 40 for r in rows) or all(eos in r for r in rows)


def test_rows_marked_done_by_the_caller_leave_the_batch(gpt2):
    done = np.zeros(3, dtype=bool)
    seen_rows = []
    for step, (rows, _, _) in enumerate(gpt2.engine.generate(PROMPT, n=3, max_new_tokens=10, params=GREEDY,
                                                          rng=np.random.default_rng(0), done=done)):
        seen_rows.append(rows.tolist())
        if step == 2:
            done[1] = True
    assert seen_rows[:3] == [[0, 1, 2]] * 3 and seen_rows[3:] == [[0, 2]] * 7


def test_repetition_penalty_changes_a_repetitive_greedy_output(gpt2):
    plain = run(gpt2.engine, PROMPT)[0]
    penalized = run(gpt2.engine, PROMPT, params=SamplingParams(temperature=0, repetition_penalty=5.0))[0]
    assert plain.count(153) >= 5 and penalized.count(153) <= 1


@pytest.mark.parametrize("kwargs, word", [(dict(n=0), "n must"), (dict(max_new_tokens=0), "max_new_tokens"),
                                          (dict(max_new_tokens=200), "context")])
def test_bad_arguments_are_refused_when_called(gpt2, kwargs, word):
    options = {"n": 1, "max_new_tokens": 5, "params": GREEDY, "rng": np.random.default_rng(0), **kwargs}
    with pytest.raises(ValueError, match=word):
        gpt2.engine.generate(PROMPT, **options)  # no next(): the check is eager


def test_device_resident_cache_path_gives_the_same_ids(gpt2):
    """The IO-binding path that CUDA uses (cache kept where the session puts it), exercised here on the CPU."""
    from tweetgen import Engine

    bound = Engine(gpt2.engine.session, gpt2.engine.spec, context_length=gpt2.engine.context_length,
                   eos_token_ids=tuple(gpt2.engine.eos_token_ids.tolist()), io_binding=True)
    assert run(bound, PROMPT) == [GOLDEN["gpt2"]]
    params = SamplingParams(temperature=1.0, top_k=0, repetition_penalty=1.3)
    eos = int(gpt2.engine.eos_token_ids[0])
    early = 0
    for seed in range(12):
        want = run(gpt2.engine, PROMPT, n=6, max_new_tokens=40, params=params, seed=seed)
        assert run(bound, PROMPT, n=6, max_new_tokens=40, params=params, seed=seed) == want
        early += sum(eos in row for row in want)
    assert early > 0, "no row ended early: the test did not cover rows leaving the batch"


def test_rows_leaving_a_shared_cache_move_up_in_place_and_in_order():
    from tweetgen.runners import leave as _leave

    buffers = [np.arange(5 * 2 * 6 * 3, dtype=np.float32).reshape(5, 2, 6, 3) + 1000 * i for i in range(2)]
    before = [b.copy() for b in buffers]
    left = _leave(buffers, np.array([True, False, True, False, True]), length=4)
    for buffer, after, original in zip(buffers, left, before):
        assert after.shape == (3, 2, 6, 3) and np.shares_memory(after, buffer) and after.flags.c_contiguous
        assert (after[:, :, :4] == original[[0, 2, 4], :, :4]).all()  # the positions that hold anything
    # nothing moves when only the last rows leave
    again = _leave(left, np.array([True, True, False]), length=4)
    assert (again[0][:, :, :4] == before[0][[0, 2], :, :4]).all()
