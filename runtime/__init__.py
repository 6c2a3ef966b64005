"""tweetgen: turn the tweets of one or more people into a bot that writes like them, and run it anywhere, fast.

This package is the runtime (numpy, onnxruntime and tokenizers; no torch); the offline trainer is `tweetgen.trainer`.

    from tweetgen import Generator
    gen = Generator.load("exported/tweety")
    gen.generate("My dream is", n=5, seed=0)
"""

import importlib.util as _util

if _util.find_spec("onnxruntime") is None:
    raise ImportError("tweetgen needs onnxruntime, which comes as an extra so that the CPU and GPU builds never sit "
                      "side by side: pip install \"tweetgen[cpu]\" (or \"tweetgen[gpu]\" for NVIDIA GPUs)")

from .engine import Engine, GraphSpec, Step  # noqa: E402
from .errors import ModelFolderError, NoDefaultModelError, TweetgenError  # noqa: E402
from .folder import ModelFolder, SamplingDefaults, read_folder  # noqa: E402
from .generator import Generator, cuda_available  # noqa: E402
from .request import Request  # noqa: E402
from .sampling import SamplingParams, sample  # noqa: E402
from .version import version  # noqa: E402

__version__ = version()
__all__ = [
    "Engine",
    "Generator",
    "GraphSpec",
    "ModelFolder",
    "ModelFolderError",
    "NoDefaultModelError",
    "Request",
    "SamplingDefaults",
    "SamplingParams",
    "Step",
    "TweetgenError",
    "__version__",
    "cuda_available",
    "read_folder",
    "sample",
]
