"""Training settings are checked before any work, each error naming the setting and what is allowed."""
from __future__ import annotations

import re

import pytest

from tweetgen.errors import TweetgenError
from tweetgen.trainer.train.config import TrainConfig


@pytest.mark.parametrize("setting, value, allowed", [
    ("batch_size", 0, ">= 1"), ("batch_size", 2.5, ">= 1"), ("gradient_accumulation", -1, ">= 1"),
    ("block_size", 4, ">= 8"), ("validation_fraction", 1.0, "[0, 1)"), ("validation_fraction", -0.1, "[0, 1)"),
    ("learning_rate", float("nan"), "(0, 1)"), ("learning_rate", -1e-4, "(0, 1)"), ("learning_rate", 0.0, "(0, 1)"),
    ("epochs", -1.0, "(0, 10000)"), ("epochs", float("inf"), "(0, 10000)"), ("max_steps", 0, "-1 (no limit)"),
    ("warmup_ratio", 1.5, "[0, 1)"), ("eval_steps", -5, ">= 0"),
])
def test_a_setting_out_of_range_is_refused_naming_the_range(setting, value, allowed):
    with pytest.raises(TweetgenError, match=rf"{setting.replace('_', '-')} must be .*{re.escape(allowed)}"):
        TrainConfig(**{setting: value})


@pytest.mark.parametrize("spec, message", [
    ("scratch:width=100,heads=3", "multiple of heads"), ("scratch:heads=0", "heads=0 is outside"),
    ("scratch:context=2", "context=2 is outside"), ("scratch:layers=0", "layers=0 is outside"),
    ("scratch:vocab=10", "vocab=10 is outside"), ("scratch:width=abc", "expected an integer"),
])
def test_a_scratch_model_of_impossible_sizes_is_refused(spec, message):
    with pytest.raises(TweetgenError, match=message):
        TrainConfig(base_model=spec)


def test_the_defaults_and_a_sane_scratch_model_pass():
    TrainConfig()
    TrainConfig(base_model="scratch:layers=2,width=64,heads=4,vocab=512,context=64", max_steps=10)
