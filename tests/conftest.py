"""Shared fixtures: the committed tiny models, and the location of ../shared/data (absent on a user's clone)."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_GPT2 = FIXTURES / "tiny_gpt2"
TINY_LLAMA = FIXTURES / "tiny_llama"


@pytest.fixture(scope="session")
def gpt2():
    from runtime import Generator

    return Generator.load(TINY_GPT2, device="cpu")


@pytest.fixture(scope="session")
def llama():
    from runtime import Generator

    return Generator.load(TINY_LLAMA, device="cpu")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (it exists for development and CI only)")
    return SHARED_DATA
