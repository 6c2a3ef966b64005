"""`tweetgen-serve`: an OpenAI-compatible HTTP server (POST /v1/completions, GET /v1/models, GET /health, and a page
to try the bot at GET /) over one loaded model, with requests batched together (`tweetgen.batching`).

Needs the `serve` extra (Starlette and uvicorn); `import tweetgen` never imports this package.
"""

from .app import create_app, main  # noqa: F401
