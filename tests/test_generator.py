"""The text API: Generator.generate and Generator.stream on the committed tiny models."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tweetgen import Generator, SamplingDefaults


def test_same_seed_same_texts_and_other_seeds_differ(gpt2):
    first = gpt2.generate("My dream is", n=3, seed=11)
    assert len(first) == 3 and all(isinstance(t, str) and t.strip() for t in first)
    assert gpt2.generate("My dream is", n=3, seed=11) == first
    assert gpt2.generate("My dream is", n=3, seed=12) != first


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("options", [{}, {"max_chars": 40}, {"stop_at_newline": True}, {"max_chars": None},
                                     {"temperature": 0}, {"user": "bob", "top_p": 0.5}])
def test_stream_joined_equals_generate(arch, options, request):
    generator = request.getfixturevalue(arch)
    for seed in range(4):
        pieces = list(generator.stream("My dream is", seed=seed, **options))
        assert "".join(pieces) == generator.generate("My dream is", seed=seed, **options)[0]


def test_continuations_only_and_limits(gpt2):
    texts = gpt2.generate("My dream is", n=8, seed=0, max_new_tokens=40, max_chars=50)
    assert all(len(t) <= 50 for t in texts)
    assert not any(t.startswith("My dream is") for t in texts)


def test_defaults_come_from_generation_config(gpt2):
    assert gpt2.folder.sampling == SamplingDefaults(max_new_tokens=40, temperature=1.0, top_k=50, top_p=0.95,
                                                    repetition_penalty=1.0)
    explicit = gpt2.generate("Rockets", n=2, seed=5, max_chars=None, max_new_tokens=40, temperature=1.0, top_k=50,
                             top_p=0.95, repetition_penalty=1.0)
    assert gpt2.generate("Rockets", n=2, seed=5, max_chars=None) == explicit
    assert gpt2.generate("Rockets", n=2, seed=5, max_chars=None, top_p=0.5) != explicit
    assert gpt2.generate("Rockets", n=2, seed=5, max_chars=None, min_p=0.2) != explicit


def test_user_prefix_selects_a_voice(gpt2):
    assert gpt2.users == ["alice", "bob"]
    plain, alice = gpt2.encode_prompt("Hi"), gpt2.encode_prompt("Hi", user="alice")
    assert gpt2.tokenizer.decode(alice, skip_special_tokens=False) == "<|endoftext|>@alice: Hi"
    assert plain != alice
    assert gpt2.generate("Hi", seed=1, user="alice") != gpt2.generate("Hi", seed=1, user="bob")


def test_unknown_user_lists_the_known_ones(gpt2):
    with pytest.raises(ValueError, match="unknown user 'carol'.*alice, bob"):
        gpt2.generate("Hi", user="carol")


@pytest.mark.parametrize("kwargs, word", [
    ({"n": 0}, "n must be"), ({"n": 5000}, "from 1 to 1024"), ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.01}, "top_p"), ({"min_p": 2}, "min_p"),
    ({"top_k": -1}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_chars": 0}, "max_chars"),
    ({"seed": -3}, "seed"), ({"prompt": "word " * 200}, "context of 128 tokens")])
def test_bad_arguments_raise_value_errors_before_any_work(gpt2, kwargs, word):
    prompt = kwargs.pop("prompt", "My dream is")
    with pytest.raises(ValueError, match=word):
        gpt2.generate(prompt, **kwargs)
    if "n" not in kwargs:
        with pytest.raises(ValueError, match=word):
            gpt2.stream(prompt, **kwargs)  # no next(): stream checks when called


def test_eight_threads_give_the_same_texts_as_serial_calls(gpt2):
    calls = [("My dream is", seed, n) for seed, n in zip(range(16), [1, 3, 5, 2] * 4)]
    serial = [gpt2.generate(p, n, seed=s, max_chars=None) for p, s, n in calls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(lambda c: gpt2.generate(c[0], c[2], seed=c[1], max_chars=None), calls))
    assert threaded == serial


def test_threads_option_and_device_validation(gpt2):
    from conftest import TINY_GPT2

    one_thread = Generator.load(TINY_GPT2, device="cpu", threads=1)
    assert one_thread.engine.session.get_session_options().intra_op_num_threads == 1
    texts = one_thread.generate("Hi", seed=0, max_new_tokens=3)
    assert len(texts) == 1 and texts[0].strip() and texts == gpt2.generate("Hi", seed=0, max_new_tokens=3)
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        Generator.load(TINY_GPT2, device="tpu")
    with pytest.raises(ValueError, match="threads"):
        Generator.load(TINY_GPT2, threads=0)


def test_a_cuda_provider_that_cannot_start_is_an_error_or_with_auto_the_cpu(gpt2, monkeypatch, caplog):
    """onnxruntime-gpu without a usable GPU (or without the CUDA libraries it needs) opens the session on the CPU;
    this onnxruntime has no CUDA provider at all, which the session treats the same way."""
    from conftest import TINY_GPT2

    from tweetgen import TweetgenError, generator

    monkeypatch.setattr(generator, "cuda_available", lambda: True)
    with pytest.raises(TweetgenError, match="could not start its CUDA provider"):
        Generator.load(TINY_GPT2, device="cuda")
    loaded = Generator.load(TINY_GPT2, device="auto")
    assert loaded.engine.device == "cpu" and not loaded.engine.io_binding
    assert loaded.engine.session.get_providers() == ["CPUExecutionProvider"]
    assert "running on the CPU" in caplog.text
    texts = loaded.generate("Hi", seed=0, max_new_tokens=3)
    assert len(texts) == 1 and texts[0].strip() and texts == gpt2.generate("Hi", seed=0, max_new_tokens=3)


def test_auto_keeps_an_int8_only_folder_on_the_cpu_even_with_a_gpu(monkeypatch, tmp_path, caplog):
    """The default model ships int8 only: its quantized operators have no CUDA kernels."""
    import shutil

    from conftest import TINY_GPT2

    from tweetgen import generator

    folder = tmp_path / "int8_only"
    shutil.copytree(TINY_GPT2, folder)
    (folder / "model.onnx").rename(folder / "model_quantized.onnx")
    monkeypatch.setattr(generator, "cuda_available", lambda: True)
    for precision in ("auto", "int8"):
        loaded = Generator.load(folder, device="auto", precision=precision)
        assert loaded.engine.device == "cpu" and loaded.model_path.name == "model_quantized.onnx"
    assert "running on the CPU" not in caplog.text  # chosen, not fallen back to
    with pytest.raises(generator.TweetgenError):  # asked for: tried (this onnxruntime has no CUDA provider)
        Generator.load(folder, device="cuda")
    assert "int8 graph on CUDA" in caplog.text


def test_trailing_spaces_are_not_shown_to_the_model_and_not_doubled(gpt2):
    assert gpt2.encode_prompt("My dream is ") == gpt2.encode_prompt("My dream is")
    assert gpt2.tokenizer.decode(gpt2.encode_prompt("", user="bob"), skip_special_tokens=False) == \
        "<|endoftext|>@bob:"
    # The same ids go in, so the same tokens come out; after a prompt that ended in a space, a continuation that
    # starts with one (the model's own " word" token) loses exactly that space, and any other is left as it is.
    with_space = 0
    for seed in range(50):  # seeds 6 and 42 begin the continuation with a space, the others mostly do not
        spaced = gpt2.generate("My dream is ", seed=seed, temperature=0.7)[0]
        plain = gpt2.generate("My dream is", seed=seed, temperature=0.7)[0]
        with_space += plain.startswith(" ")
        assert spaced == (plain[1:] if plain.startswith(" ") else plain), seed
        assert "".join(gpt2.stream("My dream is ", seed=seed, temperature=0.7)) == spaced
        assert not gpt2.generate("", seed=seed, user="alice")[0].startswith(" ")
    assert 0 < with_space < 50, "the seeds did not cover both kinds of continuation"
