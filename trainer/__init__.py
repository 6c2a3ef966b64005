"""tweetgen's offline trainer: tweets in, an exported ONNX model folder out.

Everything heavy (torch, transformers, optimum, datasets) lives here, never in `runtime`.
"""
