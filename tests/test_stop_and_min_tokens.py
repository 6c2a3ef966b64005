"""`stop` strings and `min_new_tokens`: Generator.generate/stream options and tweetgen-run's --stop/--min-new-tokens."""
import numpy as np
import pytest

from conftest import TINY_GPT2
from tweetgen.cli import main
from tweetgen.sampling import SamplingParams

OPTIONS = dict(seed=4, max_new_tokens=30, max_chars=None, temperature=1.0, top_k=0)


def a_stop_inside(text: str, after: int = 3) -> str:
    """Two ASCII letters of a text (the tiny model's texts are mostly noise) whose first occurrence is past `after`."""
    for i in range(after, len(text) - 1):
        stop = text[i:i + 2]
        if stop.isascii() and stop.isalpha() and text.find(stop) == i:
            return stop
    raise AssertionError(f"no two letters in {text!r}")


def test_a_stop_string_ends_the_text_before_it(gpt2):
    # one row: with n > 1 a row that ends sooner changes the others' draws (each step draws for the running rows)
    plain = gpt2.generate("My dream is", **OPTIONS)[0]
    stop = a_stop_inside(plain, len(plain) // 2)
    cut = gpt2.generate("My dream is", stop=stop, **OPTIONS)[0]
    assert cut == plain[:plain.find(stop)].rstrip() and stop not in cut
    # several stops: the earliest one cuts
    other = a_stop_inside(plain)
    both = gpt2.generate("My dream is", stop=[stop, other], **OPTIONS)[0]
    assert both == plain[:min(plain.find(stop), plain.find(other))].rstrip()
    assert all(stop not in t for t in gpt2.generate("My dream is", n=4, stop=stop, **OPTIONS))


def test_a_stream_with_stop_strings_never_shows_the_stop(gpt2):
    plain = gpt2.generate("My dream is", **OPTIONS)[0]
    stop = a_stop_inside(plain)
    pieces = list(gpt2.stream("My dream is", stop=stop, **OPTIONS))
    assert "".join(pieces) == gpt2.generate("My dream is", stop=stop, allow_copies=True, **OPTIONS)[0]
    assert all(stop not in "".join(pieces[:i + 1]) for i in range(len(pieces)))


def test_min_new_tokens_forbids_end_of_text_before_it(gpt2):
    """A hot temperature makes end-of-text likely at any step; with min_new_tokens no row ends before it."""
    engine, prompt = gpt2.engine, gpt2.encode_prompt("My dream is")
    hot = SamplingParams(temperature=50.0, top_k=0)

    def ended_at(minimum: int) -> list[int]:
        ends = []
        for seed in range(6):
            count = np.zeros(64, dtype=int)
            for step in engine.generate(prompt, n=64, max_new_tokens=40, params=hot, rng=np.random.default_rng(seed),
                                        min_new_tokens=minimum):
                count[step.rows] += 1
                ends += count[step.rows[step.ended]].tolist()
        return ends

    assert min(ended_at(0)) <= 20  # without it, rows do end early
    with_minimum = ended_at(20)
    assert with_minimum and min(with_minimum) == 21  # the end-of-text token is the 21st at the earliest


def test_min_new_tokens_through_generate_and_its_checks(gpt2):
    texts = gpt2.generate("My dream is", n=4, seed=0, temperature=50.0, top_k=0, max_new_tokens=12, max_chars=None,
                          min_new_tokens=12)
    assert len(texts) == 4
    with pytest.raises(ValueError, match="min_new_tokens must be an integer from 0 to max_new_tokens"):
        gpt2.generate("x", max_new_tokens=5, min_new_tokens=6)
    with pytest.raises(ValueError, match="stop must be a string or a list of at most 4"):
        gpt2.generate("x", stop=["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match="stop must be"):
        gpt2.generate("x", stop=[""])


def test_run_takes_stop_and_min_new_tokens(gpt2, capsys):
    plain = gpt2.generate("My dream is", **OPTIONS)[0]
    stop = a_stop_inside(plain)
    args = ["-m", str(TINY_GPT2), "--seed", "4", "--max-new-tokens", "30", "--max-chars", "0", "-t", "1", "-k", "0",
            "--json", "My dream is"]
    assert main([*args, "--stop", stop, "--min-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    import json

    tweets = json.loads(out)["tweets"]
    assert tweets == ["My dream is" + gpt2.generate("My dream is", stop=stop, min_new_tokens=3, **OPTIONS)[0]]
    assert stop not in tweets[0][len("My dream is"):]
    assert main([*args, "--min-new-tokens", "31"]) == 1
    assert "min_new_tokens must be" in capsys.readouterr().err
