"""The runtime against transformers on the same weights (needs the trainer's stack)."""

import numpy as np
import pytest

from conftest import FIXTURES
from helpers import GOLDEN, PROMPT
from tweetgen import Generator, SamplingParams

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def torch_greedy(hf_folder, prompt, max_new_tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=model.config.eos_token_id)
    return out[0, len(prompt):].tolist()


def runtime_greedy(generator, prompt, max_new_tokens):
    steps = generator.engine.generate(prompt, n=1, max_new_tokens=max_new_tokens,
                                      params=SamplingParams(temperature=0), rng=np.random.default_rng(0))
    return [int(step.tokens[0]) for step in steps]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_golden_ids_are_transformers_greedy_ids(arch):
    assert torch_greedy(FIXTURES / f"tiny_{arch}_hf", PROMPT, 24) == GOLDEN[arch]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("text", ["Rockets 🚀 launch today and the moon", "a", "Happy new year everyone " * 6])
def test_runtime_greedy_equals_transformers_greedy(arch, text):
    generator = Generator.load(FIXTURES / f"tiny_{arch}")
    prompt = generator.tokenizer.encode(text).ids
    assert runtime_greedy(generator, prompt, 32) == torch_greedy(FIXTURES / f"tiny_{arch}_hf", prompt, 32)


def test_the_fixture_script_rebuilds_the_same_model(tmp_path):
    pytest.importorskip("optimum.exporters.onnx")
    from tiny_model import write_fixture

    rebuilt = Generator.load(write_fixture("gpt2", tmp_path))
    assert runtime_greedy(rebuilt, PROMPT, 24) == GOLDEN["gpt2"]
