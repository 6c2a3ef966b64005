"""How much an engine costs to install: the bytes on disk of the Python distributions it needs.

Method: start from a stack's top-level requirements, follow each distribution's `Requires-Dist` (markers evaluated
for this interpreter, extras only where asked) through everything installed in this environment, and add up the
sizes of the files each distribution's RECORD lists. That is what `pip install` of the stack puts in a fresh venv's
site-packages (not the interpreter itself, nor pip). A requirement that is not installed here is listed as missing:
the stack's size is then a lower bound.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
# What a user installs for each engine (on top of nothing): the runtime's and the trainer's come from setup.cfg.
PEER_STACKS = {
    "pytorch": ["torch", "transformers"],
    "optimum": ["optimum-onnx", "onnxruntime", "torch"],
    "ct2": ["ctranslate2", "tokenizers"],
    "llamacpp": ["llama-cpp-python"],
}


@dataclass(frozen=True)
class StackSize:
    """The installed size of a set of requirements and everything they pull in."""

    bytes: int
    distributions: tuple[str, ...]  # every distribution counted
    missing: tuple[str, ...]  # required but not installed here (the size is then a lower bound)

    @property
    def mb(self) -> float:
        return self.bytes / 1e6


def setup_stacks() -> dict[str, list[str]]:
    """The runtime's install_requires, and the trainer's stack (the runtime plus the `train` extra)."""
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    runtime = _lines(parser.get("options", "install_requires"))
    train = _lines(parser.get("options.extras_require", "train"))
    return {"tweetgen": runtime, "trainer": runtime + train}


def stack_size(requirements: list[str]) -> StackSize:
    """Follow requirements through the installed distributions and add up their files' sizes."""
    seen: dict[str, int] = {}
    missing: list[str] = []
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            if name not in missing:
                missing.append(name)
            continue
        seen[name] = _files_size(dist)
        for line in dist.requires or []:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate({"extra": extra})
                                           for extra in ("", *requirement.extras)):
                todo.append(child)
    return StackSize(bytes=sum(seen.values()), distributions=tuple(sorted(seen)), missing=tuple(sorted(missing)))


def all_stack_sizes() -> dict[str, StackSize]:
    return {name: stack_size(requirements) for name, requirements in {**setup_stacks(), **PEER_STACKS}.items()}


def _files_size(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def _lines(value: str) -> list[str]:
    return [line.split("#")[0].strip() for line in value.splitlines() if line.split("#")[0].strip()]
