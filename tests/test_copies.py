"""runtime.copies: the shipped index of training 8-grams, and the Generator drawing copies again."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from tweetgen import Generator
from tweetgen.copies import FILE, CopyIndex, keys_of, words
from tweetgen.errors import ModelFolderError
from tweetgen.trainer.eval.memorization import MemorizationIndex

TINY_GPT2 = Path(__file__).parent / "fixtures" / "tiny_gpt2"
TRAIN = ["the quick brown fox jumps over the lazy dog every single morning",
         "Rain again today, so the garden will have to wait until the weekend",
         "short one"]


def test_eight_shared_words_make_a_copy_and_seven_do_not():
    index = CopyIndex.of_texts(TRAIN)
    assert index.copies("Look: THE quick, brown fox jumps over the LAZY dog!")  # case and punctuation do not matter
    assert not index.copies("the quick brown fox jumps over the cat")  # 7 shared words
    assert not index.copies("the lazy dog every single morning rain again today")  # windows never span two tweets
    assert not index.copies("short one") and not index.copies("")


def test_the_keys_are_the_top_bits_of_the_trainers_hashes(tmp_path):
    index = CopyIndex.of_texts(TRAIN)
    assert (index.keys == keys_of(MemorizationIndex(TRAIN).ngram_hashes)).all()
    assert len(index) == 5 + 6  # 12 and 13 words: 5 and 6 windows
    index.save(tmp_path / FILE)
    assert (tmp_path / FILE).stat().st_size == 4 * len(index)
    assert (CopyIndex.load(tmp_path / FILE).keys == index.keys).all()


def test_a_broken_index_is_refused(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"12345")
    with pytest.raises(ValueError, match="multiple of 4"):
        CopyIndex.load(tmp_path / "odd.bin")
    with pytest.raises(ValueError, match="sorted and unique"):
        CopyIndex(np.array([3, 1], dtype=np.uint32))
    folder = tmp_path / "model"
    shutil.copytree(TINY_GPT2, folder)
    (folder / FILE).write_bytes(b"123")
    with pytest.raises(ModelFolderError, match="copy index"):
        Generator.load(folder, device="cpu")


@pytest.fixture
def copying_model(tmp_path):
    """The tiny model with a copy index made of its own first outputs: its first draws are all copies."""
    plain = Generator.load(TINY_GPT2, device="cpu")
    options = dict(seed=7, max_new_tokens=40, max_chars=None)
    first = plain.generate("", 6, **options)
    assert sum(len(words(t)) >= 8 for t in first) >= 3, "the tiny model wrote too few long texts for this test"
    folder = tmp_path / "model"
    shutil.copytree(TINY_GPT2, folder)
    CopyIndex.of_texts(first).save(folder / FILE)
    return Generator.load(folder, device="cpu"), first, options


def test_copies_are_drawn_again_unless_allowed(copying_model):
    generator, first, options = copying_model
    assert generator.generate("", 6, allow_copies=True, **options) == first
    again = generator.generate("", 6, **options)
    assert len(again) == 6 and not any(generator.copy_index.copies(t) for t in again)
    kept = [t for t in first if not generator.copy_index.copies(t)]
    assert again[:len(kept)] == kept  # the texts that copied nothing stay; only the copies were drawn again
    assert generator.generate("", 6, **options) == again  # and with a seed, the redraws repeat too
