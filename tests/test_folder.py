"""Loading model folders: what is required, what is optional, and the errors for everything else."""

import json
import shutil

import pytest

from conftest import TINY_GPT2
from tweetgen import Generator, ModelFolderError, read_folder
from tweetgen.folder import SamplingDefaults


@pytest.fixture
def copy(tmp_path):
    def make(*drop: str):
        dest = tmp_path / "model"
        shutil.copytree(TINY_GPT2, dest)
        for name in drop:
            (dest / name).unlink()
        return dest
    return make


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        Generator.load(tmp_path / "nope")


def test_every_missing_file_is_listed_at_once(copy):
    folder = copy("model.onnx", "tokenizer.json", "config.json")
    with pytest.raises(ModelFolderError, match="missing model.onnx, tokenizer.json, config.json"):
        Generator.load(folder)


def test_corrupt_model_is_a_clear_error(copy):
    folder = copy()
    (folder / "model.onnx").write_bytes(b"this is not protobuf" * 10)
    with pytest.raises(ModelFolderError, match="model.onnx: it is not a valid ONNX model"):
        Generator.load(folder)


def test_corrupt_config_is_a_clear_error(copy):
    folder = copy()
    (folder / "config.json").write_text("{oops")
    with pytest.raises(ModelFolderError, match="cannot read .*config.json"):
        Generator.load(folder)


def test_bad_tokenizer_is_a_clear_error(tmp_path):
    dest = tmp_path / "m"
    shutil.copytree(TINY_GPT2, dest)
    (dest / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="cannot read .*tokenizer.json"):
        Generator.load(dest)


def test_plain_optimum_folder_without_tweetgen_json_loads(copy):
    folder = copy("tweetgen.json")
    generator = Generator.load(folder)
    assert generator.users == [] and generator.folder.prompt_start == ""
    assert len(generator.generate("My dream is", n=2, seed=0)) == 2
    with pytest.raises(ValueError, match="unknown user 'alice'; this model knows: none"):
        generator.generate("x", user="alice")


def test_newer_format_is_refused(copy):
    folder = copy()
    (folder / "tweetgen.json").write_text(json.dumps({"format": 2}))
    with pytest.raises(ModelFolderError, match="format 2; this tweetgen reads format 1"):
        Generator.load(folder)


def test_precision_picks_the_variant(copy):
    folder = copy()
    assert Generator.load(folder, precision="auto").model_path.name == "model.onnx"
    with pytest.raises(ModelFolderError, match="no model_quantized.onnx.*available: fp32"):
        Generator.load(folder, precision="int8")
    shutil.copy(folder / "model.onnx", folder / "model_quantized.onnx")
    assert Generator.load(folder, precision="auto", device="cpu").model_path.name == "model_quantized.onnx"
    assert Generator.load(folder, precision="fp32").model_path.name == "model.onnx"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, int8, fp16, int4, not 'int3'"):
        Generator.load(folder, precision="int3")
    with pytest.raises(ModelFolderError, match="no model_q4.onnx for precision 'int4'"):
        Generator.load(folder, precision="int4")
    (folder / "model.onnx").unlink()  # an int8-only folder (export --no-fp32 --no-fp16), on any device
    assert read_folder(folder).variant_path("auto", "cuda").name == "model_quantized.onnx"
    assert Generator.load(folder, precision="auto", device="cpu").model_path.name == "model_quantized.onnx"
    with pytest.raises(ModelFolderError, match="no model.onnx.*available: int8"):
        Generator.load(folder, precision="fp32")


def test_layer_count_is_cross_checked_with_config(copy):
    folder = copy()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(ModelFolderError, match="2 layers of KV cache but config.json says 3"):
        Generator.load(folder)


@pytest.mark.parametrize("generation, want", [
    ({}, SamplingDefaults(64, 1.0, 50, 0.95, 1.0)),
    ({"do_sample": False, "temperature": 0.7}, SamplingDefaults(64, 0.0, 50, 1.0, 1.0)),
    ({"do_sample": True, "top_p": 0.9, "max_new_tokens": 30}, SamplingDefaults(30, 1.0, 50, 0.9, 1.0)),
    ({"do_sample": True, "top_k": 0, "min_p": 0.05}, SamplingDefaults(64, 1.0, 0, 1.0, 1.0, 0.05)),
])
def test_sampling_defaults_follow_generation_config(copy, generation, want):
    folder = copy()
    (folder / "generation_config.json").write_text(json.dumps(generation))
    assert read_folder(folder).sampling == want
