"""tweetgen: turn the tweets of one or more people into a bot that writes like them, and run it anywhere, fast.

This package is the runtime (numpy, onnxruntime and tokenizers; no torch); the offline trainer is `tweetgen.trainer`.

    from tweetgen import Generator
    gen = Generator.load("exported/tweety")
    gen.generate("My dream is", n=5, seed=0)
"""

import importlib as _importlib
import importlib.util  # noqa: F401 (find_spec below; importing a submodule is what makes it an attribute)

from .errors import ModelFolderError, NoDefaultModelError, TweetgenError  # noqa: F401 (the public errors)

# The public names, each from its module. They are imported when first used (PEP 562), so that `tweetgen-run` starts
# before onnxruntime is loaded: an interrupt during that load is then its own, handled like any other.
_EXPORTS = {
    "Engine": ".engine", "GraphSpec": ".engine", "Step": ".engine", "ModelFolder": ".folder",
    "SamplingDefaults": ".folder", "read_folder": ".folder", "Generator": ".generator",
    "cuda_available": ".generator", "Request": ".request", "SamplingParams": ".sampling", "sample": ".sampling",
}
__all__ = sorted([*_EXPORTS, "ModelFolderError", "NoDefaultModelError", "TweetgenError", "__version__"])


def __getattr__(name: str):
    if name == "__version__":  # read from the installed metadata when first asked for
        from .version import version

        globals()[name] = version()
        return globals()[name]
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tweetgen' has no attribute {name!r}")
    if _importlib.util.find_spec("onnxruntime") is None:
        raise ImportError("tweetgen needs onnxruntime, which comes as an extra so that the CPU and GPU builds never "
                          "sit side by side: pip install \"tweetgen[cpu]\" (or \"tweetgen[gpu]\" for NVIDIA GPUs)")
    value = getattr(_importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
