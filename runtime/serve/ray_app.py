"""tweetgen-serve on Ray Serve: the same ASGI app in N replicas behind Ray's HTTP proxy.

    tweetgen-serve --ray --replicas 2 [-m DIR] [--host 127.0.0.1] [--port 8000]

Each replica loads the model folder once and batches its own requests (continuous batching, as the single-process
server); Ray's proxy spreads requests over the replicas. `--ray` joins the cluster in $RAY_ADDRESS when it is set,
else it starts a local one on this machine and stops it on exit. On a cluster the folder must be readable at the
same path on every node that runs a replica (a shared file system, or the same image), and tweetgen with the `ray`
extra installed there.

Needs the `ray` extra (`pip install "tweetgen[ray]"`); nothing else in tweetgen imports Ray.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any


def deployment(make_app: Callable[..., Any], model: str, *, replicas: int, threads: int, cpus: float,
               device: str = "cpu", precision: str = "auto", batching: bool = True, max_rows: int = 64,
               max_queue: int = 64) -> Any:
    """A bound Ray Serve application: `replicas` copies of the app `make_app(generator, ...)` makes
    (tweetgen-serve's `create_app`) over the folder `model`.

    `threads` is each replica's onnxruntime thread count and `cpus` the CPUs Ray reserves for it (Ray places
    replicas by that number; fractions are allowed)."""
    from ray import serve

    def build():  # runs in each replica, when it starts
        from ..generator import Generator

        generator = Generator.load(model, device=device, precision=precision, threads=threads)
        return make_app(generator, batching=batching, max_rows=max_rows, max_queue=max_queue)

    ingress = serve.ingress(build)()
    # a replica's own queue answers 503 when full; Ray's limit sits above it so that the answer is ours
    app = serve.deployment(ingress, name="tweetgen", num_replicas=replicas,
                           max_ongoing_requests=max_queue + max_rows + 8,
                           ray_actor_options={"num_cpus": cpus})
    return app.bind()


def serve_on_ray(make_app: Callable[..., Any], model: str, *, host: str, port: int, replicas: int,
                 threads: int | None, device: str, precision: str, batching: bool, max_rows: int,
                 max_queue: int) -> int:
    """Start (or join) Ray, run the deployment behind Ray's proxy on host:port, block until interrupted."""
    import ray
    from ray import serve

    def interrupted(signum, frame):  # SIGTERM as Ctrl-C: Ray's local cluster is torn down on the way out
        raise KeyboardInterrupt

    # Ray's proxy must report ready within 5 s or is killed and started again; on a small or busy machine its start
    # (importing its web stack) takes longer, and the restarts never end. A user's own setting wins.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "120")
    address = os.environ.get("RAY_ADDRESS")
    ray.init(address=address or None, include_dashboard=False, logging_level="warning")
    signal.signal(signal.SIGTERM, interrupted)  # after ray.init, whose own handler aborts the process
    try:
        total = float(ray.cluster_resources().get("CPU", 1.0))
        per_replica = total / replicas
        if threads is None:
            threads = max(1, int(per_replica))
        # never ask for more CPUs than the cluster has: the replicas would wait for them forever
        cpus = min(float(threads), per_replica)
        print(f"tweetgen-serve on Ray: {replicas} replica(s) of {model}, {threads} thread(s) each, "
              f"{cpus:g} CPU(s) reserved each of the cluster's {total:g}; http://{host}:{port}", flush=True)
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(make_app, model, replicas=replicas, threads=threads, cpus=cpus, device=device,
                             precision=precision, batching=batching, max_rows=max_rows, max_queue=max_queue),
                  name="tweetgen", route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
