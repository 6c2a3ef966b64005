"""tweetgen-serve: the OpenAI-compatible API (with the official openai client), bad input, the queue limit, and
continuous batching (a request decoded inside a shared batch writes what it writes alone)."""
from __future__ import annotations

import json
import socket
import sys
import threading

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

from starlette.testclient import TestClient  # noqa: E402

from helpers import TINY_GPT2_FUSED, serving  # noqa: E402
from tweetgen.batching import Job, Scheduler  # noqa: E402
from tweetgen.serve import create_app  # noqa: E402

MODEL = "tiny_gpt2_fused"


@pytest.fixture(scope="module")
def fused():
    from tweetgen import Generator

    generator = Generator.load(TINY_GPT2_FUSED, device="cpu")
    assert generator.engine.shared_cache  # rows at different positions can share its batch
    return generator


@pytest.fixture(scope="module")
def client(fused):
    with TestClient(create_app(fused, max_rows=16)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def server(fused):
    """A real uvicorn server on 127.0.0.1 (helpers.serving)."""
    with serving(create_app(fused, max_rows=16)) as url:
        yield url


def test_the_openai_client_gets_the_generators_texts(server, fused):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in api.models.list().data] == [MODEL]
    options = dict(max_tokens=12, seed=5, temperature=0.9, top_p=0.95, user="alice")
    reply = api.completions.create(model=MODEL, prompt="My dream is", n=3, **options)
    want = fused.generate("My dream is", n=3, seed=5, max_new_tokens=12, temperature=0.9, top_p=0.95, user="alice")
    assert [c.text for c in reply.choices] == want
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in reply.choices)
    assert reply.usage.prompt_tokens == len(fused.encode_prompt("My dream is", "alice"))
    assert 3 <= reply.usage.completion_tokens <= 36
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # streamed: the deltas of each choice join into the same texts, each choice ends with its finish_reason
    texts, reasons = ["", "", ""], [None, None, None]
    for event in api.completions.create(model=MODEL, prompt="My dream is", n=3, stream=True, **options):
        for choice in event.choices:
            texts[choice.index] += choice.text
            reasons[choice.index] = reasons[choice.index] or choice.finish_reason
    assert texts == want and None not in reasons
    # stop strings and the voice field
    plain = fused.generate("Hello", seed=2, max_new_tokens=20, max_chars=None)[0]
    stop = next(plain[i:i + 2] for i in range(3, len(plain)) if plain[i:i + 2].isascii() and plain[i:i + 2].isalpha())
    cut = api.completions.create(model=MODEL, prompt="Hello", max_tokens=20, seed=2, stop=[stop])
    assert cut.choices[0].text == fused.generate("Hello", seed=2, max_new_tokens=20, stop=stop)[0]
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    with pytest.raises(openai.UnprocessableEntityError, match="unknown voice 'carol'"):
        api.completions.create(model=MODEL, prompt="Hi", extra_body={"voice": "carol"})


def test_models_health_and_page(client):
    models = client.get("/v1/models").json()["data"]
    assert models[0]["id"] == MODEL and models[0]["voices"] == ["alice", "bob"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["batching"] is True
    page = client.get("/")
    assert page.status_code == 200 and "/v1/completions" in page.text and "<script" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the network


BAD = [
    (b'{"prompt": "My', 400, None, "not valid JSON"),
    (b'[1, 2]', 400, None, "must be a JSON object"),
    (b'\xff\xfe', 400, None, "not valid JSON"),
    (b'{"prompt": 5}', 400, "prompt", "prompt must be a string"),
    (b'{"prompt": "x", "n": "3"}', 400, "n", "n must be an integer"),
    (b'{"prompt": "x", "n": 0}', 422, "n", "n must be from 1 to 16"),
    (b'{"prompt": "x", "n": 100}', 422, "n", "n must be from 1 to 16"),
    (b'{"prompt": "x", "max_tokens": 0}', 422, "max_tokens", "max_tokens must be from 1"),
    (b'{"prompt": "x", "max_tokens": 100000}', 422, "max_tokens", "max_tokens must be from 1"),
    (b'{"prompt": "x", "temperature": "hot"}', 400, "temperature", "temperature must be a number"),
    (b'{"prompt": "x", "top_p": 0}', 422, "top_p", "top_p must be in (0, 1]"),
    (b'{"prompt": "x", "min_p": 1.5}', 422, "min_p", "min_p must be in [0, 1]"),
    (b'{"prompt": "x", "stop": [1]}', 400, "stop", "stop must be a string or a list"),
    (b'{"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}', 422, "stop", "at most 4"),
    (b'{"prompt": "x", "stream": "yes"}', 400, "stream", "stream must be true or false"),
    (b'{"prompt": "x", "frobnicate": 1}', 400, "frobnicate", "unknown field 'frobnicate'"),
    (b'{"prompt": "x", "logprobs": 3}', 422, "logprobs", "not supported"),
    (b'{"prompt": "x", "voice": "carol"}', 422, "voice", "unknown voice 'carol'; this model's voices: alice, bob"),
    (b'{"prompt": "x", "user": "carol"}', 422, "user", "unknown voice 'carol'"),
    (b'{"prompt": "x", "model": "gpt-4"}', 404, "model", "serves 'tiny_gpt2_fused'"),
    (b'{"prompt": "x", "min_tokens": 9, "max_tokens": 5}', 422, "min_tokens", "must not exceed max_tokens"),
    (b'{"prompt": "x", "max_chars": 0}', 422, "max_chars", "max_chars must be from 1"),
    (b'{"prompt": "x", "max_chars": "long"}', 400, "max_chars", "max_chars must be an integer"),
    (json.dumps({"prompt": "word " * 200}).encode(), 422, "prompt", "longer than the model's context"),
    (json.dumps({"prompt": "w" * 60000}).encode(), 422, "prompt", "far longer than the model's context"),
]


@pytest.mark.parametrize("body, status, param, message", BAD, ids=[b[3] for b in BAD])
def test_bad_input_is_an_openai_error_naming_the_problem(client, body, status, param, message):
    response = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error" and "Traceback" not in response.text


def test_max_chars_cuts_the_text_or_with_null_leaves_every_token(client):
    ask = {"prompt": "My dream is", "max_tokens": 24, "min_tokens": 24, "seed": 3}
    cut = client.post("/v1/completions", json={**ask, "max_chars": 6}).json()
    whole = client.post("/v1/completions", json={**ask, "max_chars": None}).json()
    assert len(cut["choices"][0]["text"]) <= 6 and cut["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["completion_tokens"] == 24
    assert len(whole["choices"][0]["text"]) > len(cut["choices"][0]["text"])


def test_a_body_over_the_limit_is_413_and_the_server_keeps_serving(client):
    response = client.post("/v1/completions", content=b'{"prompt": "' + b"x" * 70000 + b'"}')
    assert response.status_code == 413 and "over 65,536 bytes" in response.json()["error"]["message"]
    assert client.post("/v1/completions", content=b"{]").status_code == 400
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"
    assert client.get("/v1/completions").status_code == 405
    ok = client.post("/v1/completions", json={"prompt": "My dream is", "max_tokens": 4, "seed": 0})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 1


def test_a_full_queue_is_503_with_retry_after(fused):
    with TestClient(create_app(fused, max_queue=0)) as full:
        response = full.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "queue_full"


def collect(scheduler: Scheduler, generator, prompt: str, n: int, seed: int, top_k: int = 0, on_event=None):
    """Submit a job; (texts by row, an Event set when it ends)."""
    ids, held = generator._encode(prompt, None)
    out: dict[int, str] = {}
    finished = threading.Event()

    def emit(kind, *args):
        if on_event is not None:
            on_event(kind)
        if kind == "done":
            out[args[0]] = args[1]
        elif kind in ("end", "error"):
            out["error"] = args[0] if args else None
            finished.set()

    request = generator.request(seed=seed, max_new_tokens=30, temperature=1.0, top_k=top_k, max_chars=None)
    scheduler.submit(Job(ids=ids, n=n, request=request, held=held, emit=emit))
    return out, finished


def test_a_request_in_a_shared_batch_writes_what_it_writes_alone(fused):
    """Four requests start together, and one more joins while they decode (submitted from inside the batch's first
    step): each one's texts equal Generator.generate's for its prompt and seed, decoded alone. Two of them sample
    top-k with the same settings, so they choose together (one call for their rows, each row with its own job's
    random numbers); the others (top_k 0: top-p alone) choose one job at a time."""
    scheduler = Scheduler(fused, max_rows=16)
    jobs = [("My dream is", 3, 1, 0), ("Hello", 2, 7, 20), ("", 1, 3, 20), ("The moon and the stars are", 2, 11, 0)]
    late: list = []

    def join_late(kind):
        if not late:
            late.append(collect(scheduler, fused, "Today I", 2, 5, 20))

    results = [collect(scheduler, fused, p, n, seed, top_k, join_late if i == 0 else None)
               for i, (p, n, seed, top_k) in enumerate(jobs)]
    scheduler.start()
    try:
        for out, finished in results:
            assert finished.wait(60)
        assert late[0][1].wait(60)
    finally:
        scheduler.stop()
    for (prompt, n, seed, top_k), (out, _) in zip([*jobs, ("Today I", 2, 5, 20)], [*results, late[0]]):
        alone = fused.generate(prompt, n=n, seed=seed, max_new_tokens=30, temperature=1.0, top_k=top_k,
                               max_chars=None)
        assert out.get("error") is None and [out[i] for i in range(n)] == alone
    # the late request's rows joined the first four's (8 rows) while those ran: 10 rows in one step, and far fewer
    # steps than one request at a time (30 each at most, here at most 2 x 30 for all of them together)
    assert scheduler.peak_rows == 10 and scheduler.steps < 2 * 30


def test_rows_that_read_the_graph_s_best_tokens_write_what_they_write_alone(fused):
    """Greedy and top-k jobs read each row's best tokens from the graph (not the logits), as many as the batch's
    widest need: a job with another k joins (its scores padded to one width), a job that may not end yet asks for
    more (its best without end-of-text), and a top-p-only job and a job with a repetition penalty, which need the
    logits, join while the others read best tokens (theirs turned back into logits). Each job's texts equal
    Generator.generate's alone."""
    scheduler = Scheduler(fused, max_rows=16)
    steps: list = []
    tops: list = []
    step = scheduler.slots.step

    def watched(tokens, top=0):
        tops.append(top)
        return step(tokens, top)

    scheduler.slots.step = watched
    jobs = [dict(prompt="My dream is", n=2, seed=1, temperature=0.0),
            dict(prompt="Hello", n=2, seed=7, top_k=12, min_new_tokens=12),
            dict(prompt="The moon", n=1, seed=3, top_k=9)]
    later = [dict(prompt="Today I", n=2, seed=5, top_k=30),
             dict(prompt="Why", n=1, seed=2, top_k=0, top_p=0.8),
             dict(prompt="Hello", n=2, seed=4, top_k=20, repetition_penalty=1.3)]
    outs: list = []

    def submit(options):
        ids, held = fused._encode(options["prompt"], None)
        out, finished = {}, threading.Event()

        def emit(kind, *args):
            if kind == "done":
                out[args[0]] = args[1]
            elif kind in ("end", "error"):
                out["error"] = args[0] if args else None
                finished.set()
            if kind == "delta" and len(steps) < len(later):  # the first pieces of text: the later jobs join then
                steps.append(kind)
                submit(later[len(steps) - 1])

        extra = {k: v for k, v in options.items() if k not in ("prompt", "n", "seed")}
        request = fused.request(seed=options["seed"], max_new_tokens=30, max_chars=None,
                                **{"temperature": 1.0, **extra})
        scheduler.submit(Job(ids=ids, n=options["n"], request=request, held=held, emit=emit))
        outs.append((options, out, finished))

    for options in jobs:
        submit(options)
    scheduler.start()
    try:
        for _ in range(600):
            if len(outs) == 6 and all(finished.is_set() for _, _, finished in outs):
                break
            threading.Event().wait(0.1)
        assert len(outs) == 6 and all(finished.is_set() for _, _, finished in outs)
    finally:
        scheduler.stop()
    for options, out, _ in outs:
        extra = {k: v for k, v in options.items() if k not in ("prompt", "n", "seed")}
        alone = fused.generate(options["prompt"], n=options["n"], seed=options["seed"], max_new_tokens=30,
                               max_chars=None, **{"temperature": 1.0, **extra})
        assert out.get("error") is None and [out[i] for i in range(options["n"])] == alone, options
    eos = len(fused.engine.eos_token_ids)
    assert tops[0] == 12 + eos  # the widest need at the first step: top-k 12 + eos while that job may not end
    assert 30 in tops and 0 in tops  # top-k 30 joined; the top-p-only job needed the logits


def test_one_row_jobs_that_wait_together_run_their_prompts_in_one_prefill(fused):
    """Jobs waiting when the scheduler admits them: the one-row jobs whose prompts have one length run their
    prompts together (a run of 3 rows), the others alone; each job still writes what it writes alone."""
    scheduler = Scheduler(fused, max_rows=16)
    runs: list = []
    run = scheduler.slots._run

    def watched(ids, *args):
        runs.append(ids.shape)
        return run(ids, *args)

    scheduler.slots._run = watched
    same = ["I love you", "Today I", "My cat"]
    lengths = {len(fused._encode(p, None)[0]) for p in same}
    assert len(lengths) == 1, "the test needs prompts of one length"
    jobs = [(same[0], 1, 4, 20), ("Hello", 1, 1, 0), (same[1], 1, 9, 0), (same[2], 2, 6, 20), (same[2], 1, 8, 20)]
    results = [collect(scheduler, fused, p, n, seed, top_k) for p, n, seed, top_k in jobs]
    scheduler.start()
    try:
        for _, finished in results:
            assert finished.wait(60)
    finally:
        scheduler.stop()
    for (prompt, n, seed, top_k), (out, _) in zip(jobs, results):
        alone = fused.generate(prompt, n=n, seed=seed, max_new_tokens=30, temperature=1.0, top_k=top_k,
                               max_chars=None)
        assert out.get("error") is None and [out[i] for i in range(n)] == alone
    size = lengths.pop()  # the prompts' runs (the steps run through SlotBatch.step)
    assert sorted(runs) == sorted([(3, size), (1, len(fused._encode("Hello", None)[0])), (1, size)])


def test_a_client_that_goes_away_frees_its_rows(fused):
    """A streamed request that would write 100 tokens: the client reads its first event and closes the connection;
    its rows leave the batch long before 100 steps."""
    import http.client

    app = create_app(fused, max_rows=16)
    scheduler = app.state.scheduler
    with serving(app, backlog=8) as base:
        connection = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]))
        body = {"prompt": "My dream is", "n": 2, "max_tokens": 100, "min_tokens": 100, "stream": True, "seed": 0}
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.readline().startswith(b"data: {")
        connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()
        assert scheduler.wait_idle(60)
        assert scheduler.cancelled_rows == 2 and scheduler.steps < 100


def test_the_copy_check_applies_as_in_generate(tmp_path):
    """A model whose copy index holds its own first outputs: the server draws the copies again, as generate does,
    streamed or not."""
    import shutil

    from tweetgen import Generator
    from tweetgen.copies import FILE, CopyIndex, words

    options = dict(seed=7, max_new_tokens=40)
    first = Generator.load(TINY_GPT2_FUSED, device="cpu").generate("", 6, allow_copies=True, **options)
    assert sum(len(words(t)) >= 8 for t in first) >= 3, "the tiny model wrote too few long texts for this test"
    folder = tmp_path / "copying"
    shutil.copytree(TINY_GPT2_FUSED, folder)
    CopyIndex.of_texts(first).save(folder / FILE)
    generator = Generator.load(folder, device="cpu")
    want = generator.generate("", 6, **options)
    assert want != first and not any(generator.copy_index.copies(t) for t in want)
    body = {"prompt": "", "n": 6, "seed": 7, "max_tokens": 40}
    with TestClient(create_app(generator, max_rows=16)) as test_client:
        reply = test_client.post("/v1/completions", json=body).json()
        assert [c["text"] for c in reply["choices"]] == want
        texts = [""] * 6
        with test_client.stream("POST", "/v1/completions", json={**body, "stream": True}) as events:
            lines = [line for line in events.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            for choice in json.loads(line[len("data: "):])["choices"]:
                texts[choice["index"]] += choice["text"]
        assert texts == want


def test_the_command_refuses_a_missing_model_and_bad_limits(tmp_path, capsys):
    from tweetgen.serve import main

    assert main(["-m", str(tmp_path / "nowhere"), "--port", "0"]) == 1
    assert "Error:" in capsys.readouterr().err
    assert main(["-m", str(TINY_GPT2_FUSED), "--max-rows", "0"]) == 1
    assert "--max-rows must be from 1 to 1024" in capsys.readouterr().err


def test_a_job_whose_rows_can_never_fit_is_refused(fused):
    scheduler = Scheduler(fused, max_rows=4)
    ids, held = fused._encode("x", None)
    with pytest.raises(ValueError, match="n=5 rows do not fit a batch of at most 4 rows"):
        scheduler.submit(Job(ids=ids, n=5, request=fused.request(), held=held, emit=lambda *a: None))


def _huge_page_eligible(low: int, high: int) -> list[int] | None:
    """THPeligible of each mapping of /proc/self/smaps that overlaps [low, high) (None: the kernel does not say)."""
    flags, inside = [], False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start < high and low < end
            elif inside and head == "THPeligible:":
                flags.append(int(line.split()[1]))
    return flags or None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_the_slot_buffers_never_take_huge_pages(fused):
    """A row writes a few positions at the start of each head's context-long stretch: on 2 MB pages (NumPy advises
    them for large arrays) each write made a whole stretch resident; a GPT-2 124M server held 2.6 GB at 32 rows."""
    from tweetgen.batching import SlotBatch

    import numpy as np

    batch = SlotBatch(fused.engine, 512)  # buffers of 8 MB each: large enough for NumPy's advice
    assert batch.buffers[0].nbytes >= 8 << 20
    batch.join(np.array([fused._encode("My dream is", None)[0]]), 2)
    for buffer in batch.buffers:
        eligible = _huge_page_eligible(buffer.ctypes.data, buffer.ctypes.data + buffer.nbytes)
        if eligible is None:
            pytest.skip("this kernel's smaps has no THPeligible")
        assert eligible == [0] * len(eligible)
        assert not buffer[2:].any()  # the free slots are still zeros
