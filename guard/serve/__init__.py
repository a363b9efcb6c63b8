"""``guard serve``: any engine URI behind OpenAI's /v1/embeddings and Ollama's /api/embed
(and its older /api/embeddings), so that applications switch by changing a base URL and
get exactly the configuration the guard approved (bridge included), with its fingerprint
on every answer and in ``guard_serve_engine_info``. A request naming another model than
the served one is refused (404), since answering it would be the silent mismatch the
guard exists to catch; ``any_model`` accepts every name.

Starlette and uvicorn come with the ``serve`` extra; without them this fails with one
line before anything loads. The engine is opened, fingerprinted and warmed up before the
port opens, so a bad URI or model fails at start, not at the first request.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from guard.engines import open_engine
from guard.errors import ConfigError
from guard.serve.model import Limits, ServedModel

__all__ = ["Limits", "ServedModel", "serve"]


def serve(
    engine_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: Limits | None = None,
    announce: Callable[[str], None] = print,
    any_model: bool = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then finish the requests in flight and return.

    A request naming a model is answered only for the served model's names (404 in its
    API's shape for another), unless ``any_model``."""
    try:
        import uvicorn

        from guard.serve.app import Service, build_app
    except ImportError as exc:
        raise ConfigError(
            f"guard serve needs the serve extra ({exc.name} is not installed): "
            "pip install 'vector-migration-guard[serve]'"
        ) from exc
    from guard.serve.batcher import Batcher
    from guard.serve.metrics import Metrics
    from guard.serve.model import describe

    limits = limits or Limits()
    engine = open_engine(engine_uri)
    try:
        dims = int(engine.embed(["guard serve warms up the engine"]).shape[1])
        model = describe(engine, engine_uri, dims)
        metrics = Metrics(model)
        batcher = Batcher(
            engine, max_batch=limits.max_batch, max_queue=limits.max_queue, on_batch=metrics.batch
        )
        metrics.watch_queue(batcher.depth)
        listener = _listen(host, port)
        app = build_app(Service(model, batcher, limits, metrics, any_model=any_model))
        config = uvicorn.Config(
            app, log_config=None, access_log=False, log_level="warning",
            timeout_graceful_shutdown=30, lifespan="off",
        )  # fmt: skip
        bound_host, bound_port = listener.getsockname()[:2]
        batcher.start()
        try:
            names = "any model name" if any_model else f"model names: {', '.join(model.names)}"
            announce(
                f"serving {model.id} ({engine.uri}) on http://{bound_host}:{bound_port}, "
                f"{dims} dimensions, fingerprint sha256:{model.fingerprint_sha256}; {names}"
            )
            with _exit_quietly_on_signals():
                uvicorn.Server(config).run(sockets=[listener])
        finally:
            batcher.stop()
            listener.close()
    finally:
        engine.close()


def _listen(host: str, port: int) -> socket.socket:
    """Bind and listen here, so that a taken port is one clear line (and port 0 works):
    connections that arrive before uvicorn accepts wait in the backlog."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return listener


@contextmanager
def _exit_quietly_on_signals() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again
    for the handlers it found: let those be no-ops, so that a stop is exit 0 rather than
    death by signal or a KeyboardInterrupt traceback."""
    stopping = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda _sig, _frame: None) for sig in stopping}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
