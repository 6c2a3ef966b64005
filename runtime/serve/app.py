"""The ASGI app (Starlette) and the `tweetgen-serve` command. See the package docstring and the README."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import replace
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..batching import Job, QueueFull, Scheduler
from ..request import MAX_STOPS

log = logging.getLogger("tweetgen.serve")
MAX_BODY = 64 * 1024  # bytes of a request body
MAX_N = 16  # choices one request may ask for
COPY_ATTEMPTS = 5  # as Generator.generate: draws in all for a text that copies a training tweet
# OpenAI fields this server knows but does not implement: accepted only at the value that means "off"
NEUTRAL = {"echo": (False, None), "logprobs": (None, 0), "presence_penalty": (0, 0.0, None),
           "frequency_penalty": (0, 0.0, None), "best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None, {}),
           "stream_options": (None,)}
FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "seed", "stop", "stream",
          "user", "voice", "min_tokens", "max_chars", *NEUTRAL}


class BadRequest(Exception):
    """A request the server refuses: the HTTP status, a message naming the problem, and the field."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error(status: int, message: str, param: str | None = None, code: str = "invalid_request",
          headers: dict[str, str] | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def _int(body: dict, name: str, low: int, high: int, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(400, f"{name} must be an integer, not {type(value).__name__}", name, "invalid_type")
    if not low <= value <= high:
        raise BadRequest(422, f"{name} must be from {low} to {high}, not {value}", name, "out_of_range")
    return value


def _number(body: dict, name: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(400, f"{name} must be a number, not {type(value).__name__}", name, "invalid_type")
    if not (low < value if low_open else low <= value) or not value <= high:
        where = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise BadRequest(422, f"{name} must be in {where}, not {value}", name, "out_of_range")
    return float(value)


class Service:
    """What the routes share: the generator, its scheduler, the model's name."""

    def __init__(self, generator, scheduler: Scheduler, name: str) -> None:
        self.generator, self.scheduler, self.name = generator, scheduler, name

    def parse(self, raw: bytes) -> dict[str, Any]:
        """The request's options, checked; BadRequest naming the first problem."""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(400, f"the body is not valid JSON: {exc}", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise BadRequest(400, f"the body must be a JSON object, not {type(body).__name__}", None, "invalid_json")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise BadRequest(400, f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(FIELDS))}", unknown[0],
                             "unknown_field")
        for name, allowed in NEUTRAL.items():
            if name in body and body[name] not in allowed:
                raise BadRequest(422, f"{name} is not supported by this server (leave it out)", name, "unsupported")
        model = body.get("model")
        if model is not None and model != self.name:
            raise BadRequest(404, f"model {model!r} is not served here; this server serves {self.name!r}", "model",
                             "model_not_found")
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]  # the openai client may send one prompt as a list of one
        if not isinstance(prompt, str):
            raise BadRequest(400, f"prompt must be a string, not {type(prompt).__name__}", "prompt", "invalid_type")
        gen = self.generator
        context = gen.engine.context_length
        options: dict[str, Any] = {
            "n": _int(body, "n", 1, min(MAX_N, self.scheduler.max_rows), 1),
            "max_new_tokens": _int(body, "max_tokens", 1, context - 1, gen.folder.sampling.max_new_tokens),
            "temperature": _number(body, "temperature", 0, 2),
            "top_p": _number(body, "top_p", 0, 1, low_open=True),
            "top_k": _int(body, "top_k", 0, 1 << 20, None),
            "min_p": _number(body, "min_p", 0, 1),
            "seed": _int(body, "seed", 0, 2**63 - 1, None),
            "min_new_tokens": _int(body, "min_tokens", 0, context - 1, 0),
        }
        # tweetgen's extra: the cut on a word boundary (a tweet's 280 by default); null: no cut
        options["max_chars"] = None if "max_chars" in body and body["max_chars"] is None \
            else _int(body, "max_chars", 1, 1 << 20, 280)
        if options["min_new_tokens"] > options["max_new_tokens"]:
            raise BadRequest(422, f"min_tokens ({options['min_new_tokens']}) must not exceed max_tokens "
                                  f"({options['max_new_tokens']})", "min_tokens", "out_of_range")
        stop = body.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
            raise BadRequest(400, "stop must be a string or a list of non-empty strings", "stop", "invalid_type")
        if stop is not None and len(stop) > MAX_STOPS:
            raise BadRequest(422, f"stop may hold at most {MAX_STOPS} strings, not {len(stop)}", "stop",
                             "out_of_range")
        options["stop"] = tuple(stop or ())
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest(400, f"stream must be true or false, not {stream!r}", "stream", "invalid_type")
        for name in ("user", "voice"):
            if body.get(name) is not None and not isinstance(body[name], str):
                raise BadRequest(400, f"{name} must be a string, not {type(body[name]).__name__}", name, "invalid_type")
        voice, param = (body["voice"], "voice") if body.get("voice") is not None else (body.get("user"), "user")
        if voice is not None and voice not in gen.folder.users:
            if gen.users or param == "voice":
                known = ", ".join(gen.users[:20]) + (" ..." if len(gen.users) > 20 else "") if gen.users \
                    else "none: this model has a single voice"
                raise BadRequest(422, f"unknown voice {voice!r}; this model's voices: {known} (GET /v1/models "
                                      "lists them all)", param, "unknown_voice")
            voice = None  # OpenAI's end-user id, on a single-voice model: not a voice
        try:
            ids, held = gen._encode(prompt, voice)
            request = gen.request(max_new_tokens=options["max_new_tokens"], temperature=options["temperature"],
                                  top_k=options["top_k"], top_p=options["top_p"], min_p=options["min_p"],
                                  seed=options["seed"], user=voice, stop=options["stop"],
                                  min_new_tokens=options["min_new_tokens"], max_chars=options["max_chars"])
            gen.engine.check_length(len(ids), request.max_new_tokens)
        except ValueError as exc:
            raise BadRequest(422, str(exc), "prompt" if "prompt" in str(exc) else None, "invalid_value") from None
        return {"prompt": prompt, "ids": ids, "held": held, "n": options["n"], "request": request,
                "stream": stream}

    async def run(self, ids: list[int], held: int, n: int, request, on_delta=None) -> list[dict]:
        """Decode n rows through the scheduler; each row's {"text", "finish_reason", "tokens"}. `on_delta(i, text)`
        is awaited for each piece of text as it comes (streaming). Cancelled (a client went away): the rows leave
        the batch at the next step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(*event: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(ids=ids, n=n, request=request, held=held, emit=emit, deltas=on_delta is not None)
        self.scheduler.submit(job)
        out: list[dict] = [{} for _ in range(n)]
        try:
            while True:
                kind, *args = await events.get()
                if kind == "delta" and on_delta is not None:
                    await on_delta(args[0], args[1])
                elif kind == "done":
                    out[args[0]] = {"text": args[1], "finish_reason": args[2], "tokens": args[3]}
                elif kind == "error":
                    raise RuntimeError(args[0])
                elif kind == "end":
                    return out
        finally:
            job.cancelled = True  # no effect once the job has ended

    async def complete(self, parsed: dict, on_delta=None) -> list[dict]:
        """The choices of a request, the copy check applied as in Generator.generate (texts that repeat 8 words of
        a training tweet are drawn again with derived seeds, up to COPY_ATTEMPTS draws; streaming deltas then come
        only once each text is checked: see the README)."""
        gen, request, prompt = self.generator, parsed["request"], parsed["prompt"]
        n = parsed["n"]
        if gen.copy_index is None:
            return await self.run(parsed["ids"], parsed["held"], n, request, on_delta)
        whole = not gen.copy_index.copies(prompt)

        def is_copy(choice: dict) -> bool:
            return gen.copy_index.copies(prompt + choice["text"] if whole else choice["text"])

        fresh = [c for c in await self.run(parsed["ids"], parsed["held"], n, request) if not is_copy(c)]
        for attempt in range(1, COPY_ATTEMPTS):
            if len(fresh) == n:
                break
            seed = None if request.seed is None else \
                int(np.random.SeedSequence([request.seed, attempt]).generate_state(1)[0])
            more = await self.run(parsed["ids"], parsed["held"], n - len(fresh),
                                  replace(request, seed=seed))
            fresh += [c for c in more if not is_copy(c)]
        if on_delta is not None:
            for i, choice in enumerate(fresh):
                await on_delta(i, choice["text"])
        return fresh


def create_app(generator, *, batching: bool = True, max_rows: int = 64, max_queue: int = 64,
               name: str | None = None) -> Starlette:
    """The app over a loaded Generator; its scheduler thread starts and stops with the app's lifespan."""
    scheduler = Scheduler(generator, batching=batching, max_rows=max_rows, max_queue=max_queue)
    service = Service(generator, scheduler, name or generator.folder.path.name)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    async def completions(http: HttpRequest) -> Response:
        size = http.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            return error(413, f"the body is over {MAX_BODY:,} bytes", None, "body_too_large")
        raw = bytearray()
        async for chunk in http.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                return error(413, f"the body is over {MAX_BODY:,} bytes", None, "body_too_large")
        try:
            parsed = service.parse(bytes(raw))
        except BadRequest as bad:
            return error(bad.status, bad.message, bad.param, bad.code)
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if scheduler.waiting >= scheduler.max_queue:
            return error(503, "the server is busy: too many requests are waiting; retry shortly", None,
                         "queue_full", headers={"Retry-After": "1"})

        def chunk(index: int, text: str, reason: str | None) -> str:
            return "data: " + json.dumps({"id": ident, "object": "text_completion", "created": created,
                                          "model": service.name, "choices": [
                                              {"text": text, "index": index, "logprobs": None,
                                               "finish_reason": reason}]}, ensure_ascii=False) + "\n\n"

        if parsed["stream"]:
            async def events():
                pieces: asyncio.Queue = asyncio.Queue()

                async def on_delta(i: int, text: str) -> None:
                    pieces.put_nowait(chunk(i, text, None))

                task = asyncio.ensure_future(service.complete(parsed, on_delta))
                try:
                    while not (task.done() and pieces.empty()):
                        getter = asyncio.ensure_future(pieces.get())
                        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                        if getter.done():
                            yield getter.result()
                        else:
                            getter.cancel()
                    try:
                        choices = task.result()
                    except QueueFull as exc:
                        yield "data: " + json.dumps({"error": {"message": str(exc), "type": "server_error",
                                                               "code": "queue_full"}}) + "\n\n"
                        return
                    except RuntimeError as exc:
                        yield "data: " + json.dumps({"error": {"message": str(exc), "type": "server_error",
                                                               "code": "model_error"}}) + "\n\n"
                        return
                    for i, choice in enumerate(choices):
                        yield chunk(i, "", choice["finish_reason"])
                    yield "data: [DONE]\n\n"
                finally:
                    task.cancel()  # the client went away: its rows leave the batch

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        task = asyncio.ensure_future(service.complete(parsed))
        gone = asyncio.ensure_future(_disconnected(http))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not task.done():  # the client went away: nobody to answer
            task.cancel()
            return Response(status_code=499)
        try:
            choices = task.result()
        except QueueFull:
            return error(503, "the server is busy: too many requests are waiting; retry shortly", None,
                         "queue_full", headers={"Retry-After": "1"})
        except RuntimeError as exc:
            return error(500, str(exc), None, "model_error")
        used = sum(c["tokens"] for c in choices)
        prompt_tokens = len(parsed["ids"])
        return JSONResponse({
            "id": ident, "object": "text_completion", "created": created, "model": service.name,
            "choices": [{"text": c["text"], "index": i, "logprobs": None, "finish_reason": c["finish_reason"]}
                        for i, c in enumerate(choices)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": used,
                      "total_tokens": prompt_tokens + used}})

    async def models(_: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": service.name, "object": "model", "created": 0, "owned_by": "tweetgen",
             "path": str(generator.folder.path), "voices": generator.users,
             "context_length": generator.engine.context_length}]})

    async def health(_: HttpRequest) -> Response:
        return JSONResponse({"status": "ok", "model": service.name, "pid": os.getpid(), "batching": scheduler.batching,
                             "waiting": scheduler.waiting, "max_rows": scheduler.max_rows})

    async def index(_: HttpRequest) -> Response:
        return HTMLResponse(page)

    async def not_found(http: HttpRequest, exc: Exception) -> Response:
        return error(404, f"no route {http.url.path}; this server has POST /v1/completions, GET /v1/models, "
                          "GET /health and GET /", None, "not_found")

    async def not_allowed(http: HttpRequest, exc: Exception) -> Response:
        return error(405, f"{http.method} is not allowed on {http.url.path}", None, "method_not_allowed")

    async def crashed(http: HttpRequest, exc: Exception) -> Response:
        log.exception("unexpected error on %s", http.url.path)
        return error(500, "internal error (logged on the server)", None, "internal_error")

    def lifespan(app):
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def span(_):
            scheduler.start()
            try:
                yield
            finally:
                scheduler.stop()
        return span(app)

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]),
                            Route("/health", health, methods=["GET"]),
                            Route("/", index, methods=["GET"])],
                    exception_handlers={404: not_found, 405: not_allowed, 500: crashed, Exception: crashed},
                    lifespan=lifespan)
    app.state.service = service
    app.state.scheduler = scheduler
    return app


async def _disconnected(http: HttpRequest) -> None:
    """Returns when the client has gone away."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tweetgen-serve",
                                     description="Serve a tweetgen model over an OpenAI-compatible HTTP API.")
    parser.add_argument("-m", "--model", help="exported model folder (default: $TWEETGEN_MODEL, else the default "
                                              "model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument("--no-batching", action="store_true",
                        help="decode one request at a time (the n rows of one request still decode together)")
    parser.add_argument("--max-rows", type=int, default=64, help="rows decoded together at most (default 64)")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting at most; more get 503 with Retry-After (default 64)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8", "fp16", "int4"), default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: one per core; with --ray, the cores over "
                                                    "the replicas)")
    parser.add_argument("--ray", action="store_true",
                        help="serve through Ray Serve: --replicas copies of the app behind Ray's proxy (the `ray` "
                             "extra; joins $RAY_ADDRESS when set, else starts Ray on this machine)")
    parser.add_argument("--replicas", type=int, default=1, help="with --ray: replicas (default 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from ..cli import resolve_model
    from ..errors import TweetgenError
    from ..generator import Generator

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if not 1 <= args.max_rows <= 1024 or not 0 <= args.max_queue <= 100_000:
            raise ValueError("--max-rows must be from 1 to 1024 and --max-queue from 0 to 100000")
        if args.replicas != 1 and not args.ray:
            raise ValueError("--replicas needs --ray (one process serves one replica)")
        if not 1 <= args.replicas <= 256:
            raise ValueError(f"--replicas must be from 1 to 256, not {args.replicas}")
        if args.ray:
            return _serve_on_ray(args, resolve_model(args.model))
        generator = Generator.load(resolve_model(args.model), device=args.device, precision=args.precision,
                                   threads=args.threads)
    except (TweetgenError, ValueError, TypeError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    app = create_app(generator, batching=not args.no_batching, max_rows=args.max_rows, max_queue=args.max_queue)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def _serve_on_ray(args: argparse.Namespace, model: str) -> int:
    from pathlib import Path

    from ..folder import read_folder

    try:
        import ray.serve  # noqa: F401  (the extra's presence, checked before anything starts)

        from .ray_app import serve_on_ray
    except ImportError as exc:
        print(f"Error: --ray needs Ray Serve ({exc.name} is not installed): pip install \"tweetgen[ray]\"",
              file=sys.stderr)
        return 1
    folder = read_folder(model)  # a bad folder is this command's error, not a replica's crash loop
    return serve_on_ray(create_app, str(Path(folder.path).resolve()), host=args.host, port=args.port,
                        replicas=args.replicas, threads=args.threads, device=args.device, precision=args.precision,
                        batching=not args.no_batching, max_rows=args.max_rows, max_queue=args.max_queue)


if __name__ == "__main__":
    sys.exit(main())
