"""Constants and helpers shared by several test modules (tests never import each other).

Light on purpose: numpy and tweetgen's runtime only at import, so a runtime-only environment can import it; what
needs the trainer's stack imports it when called. The killed-run child of test_train.py imports it by name too.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_GPT2 = FIXTURES / "tiny_gpt2"
TINY_LLAMA = FIXTURES / "tiny_llama"
TINY_GPT2_HF = FIXTURES / "tiny_gpt2_hf"
TINY_GPT2_FUSED = FIXTURES / "tiny_gpt2_fused"  # tiny_gpt2 with the fused graph (tiny_model.write_fused)

# --- the token-level decoder on the committed tiny models ---

PROMPT = [45, 89, 293, 364, 221, 73, 83]  # "My dream is" in the tiny tokenizer
# Greedy continuations of PROMPT, 24 tokens; test_parity_torch.py checks them against transformers' generate().
GOLDEN = {
    "gpt2": [153, 153, 153, 153, 153, 205, 285, 96, 335, 186, 303, 335, 246, 112, 153, 153, 153, 153, 153, 153, 153,
             101, 96, 112],
    "llama": [257, 73, 263, 239, 7, 7, 7, 7, 7, 7, 7, 7, 373, 313, 334, 334, 334, 334, 334, 334, 334, 334, 334, 334],
}


def greedy():
    from tweetgen.sampling import SamplingParams

    return SamplingParams(temperature=0)


def run(engine, prompt, n=1, max_new_tokens=24, params=None, seed=0, done=None):
    """All rows' ids, as lists (greedy unless `params` says otherwise)."""
    out = [[] for _ in range(n)]
    for rows, tokens, _ in engine.generate(prompt, n=n, max_new_tokens=max_new_tokens,
                                           params=greedy() if params is None else params,
                                           rng=np.random.default_rng(seed), done=done):
        for row, token in zip(rows, tokens):
            out[row].append(int(token))
    return out


# --- fine-tuning on the tiny GPT-2 ---

TEXTS = {"alice": [f"rockets launch today number {i} and the moon is near" for i in range(60)],
         "bob": [f"coffee in the morning is great {i} times over" for i in range(40)]}


def tiny_config(**changes):
    """A TrainConfig for a few seconds of training on the tiny GPT-2 (needs the trainer's stack)."""
    from tweetgen.trainer.train.config import TrainConfig

    return TrainConfig(**{"base_model": str(TINY_GPT2_HF), "epochs": 2, "batch_size": 4, "block_size": 32,
                          "learning_rate": 2e-3, "early_stopping": 0, **changes})


# --- tweetgen-serve on loopback ---

def serving(app, backlog: int = 64):
    """A context manager running `app` on a real uvicorn server at 127.0.0.1 (a free port) and giving its base URL.
    The socket listens before the server's thread starts, so requests wait in its backlog instead of anybody polling
    for the server to be up."""
    import contextlib
    import socket
    import threading

    import uvicorn

    @contextlib.contextmanager
    def running():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
        instance = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            instance.should_exit = True
            thread.join()
            sock.close()

    return running()
