"""tweetgen's runtime: load an exported model folder and write tweets, with onnxruntime and no torch.

    from runtime import Generator
    gen = Generator.load("exported/tweety")
    gen.generate("My dream is", n=5, seed=0)
"""

from .engine import Engine, GraphSpec
from .errors import ModelFolderError, NoDefaultModelError, TweetgenError
from .folder import ModelFolder, SamplingDefaults, read_folder
from .generator import Generator, cuda_available
from .sampling import SamplingParams, sample

__all__ = [
    "Engine",
    "Generator",
    "GraphSpec",
    "ModelFolder",
    "ModelFolderError",
    "NoDefaultModelError",
    "SamplingDefaults",
    "SamplingParams",
    "TweetgenError",
    "cuda_available",
    "read_folder",
    "sample",
]
