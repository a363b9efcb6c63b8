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
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from guard.engines import open_engine
from guard.errors import ConfigError
from guard.reindex.embedding import check_engine
from guard.serve.model import Limits, ServedModel

if TYPE_CHECKING:
    from guard.serve.follow import Follower

__all__ = ["Limits", "ServedModel", "serve"]


def serve(
    engine_uri: str | None = None,
    *,
    follow: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: Limits | None = None,
    announce: Callable[[str], None] = print,
    any_model: bool = False,
    dsn: str | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then finish the requests in flight and return.

    ``follow``: a re-index job id instead of an engine; its baseline is served until the
    cutover, its candidate after (``guard.serve.follow``). A request naming a model is
    answered only for the served models' names (404 in its API's shape for another),
    unless ``any_model``."""
    if (engine_uri is None) == (follow is None):
        raise ConfigError("give an engine (--engine) or a re-index job to follow (--follow)")
    try:
        import uvicorn

        from guard.serve.app import Service, Side, build_app
    except ImportError as exc:
        raise ConfigError(
            f"guard serve needs the serve extra ({exc.name} is not installed): "
            "pip install 'vector-migration-guard[serve]'"
        ) from exc
    from guard.serve.batcher import Batcher
    from guard.serve.follow import Follower
    from guard.serve.metrics import Metrics
    from guard.serve.model import describe

    limits = limits or Limits()
    with ExitStack() as stack:
        follower = None
        if follow is not None:
            follower = Follower(follow, dsn)
            stack.callback(follower.stop)
        uris = [engine_uri] if follower is None else _followed(follower)
        engines = [stack.enter_context(open_engine(str(uri))) for uri in uris]
        if follower is not None:
            check_engine(follower.job, engines[1])  # exactly the engine the job embeds with
        models = []
        for engine, uri in zip(engines, uris, strict=True):
            dims = int(engine.embed(["guard serve warms up the engine"]).shape[1])
            models.append(describe(engine, str(uri), dims))
        first = int(follower.candidate) if follower is not None else 0
        metrics = Metrics(models[first])
        sides = [
            Side(model, Batcher(
                engine, max_batch=limits.max_batch, max_queue=limits.max_queue,
                on_batch=metrics.batch,
            ))
            for model, engine in zip(models, engines, strict=True)
        ]  # fmt: skip
        metrics.watch_queue(lambda: sum(side.batcher.depth() for side in sides))
        listener = _listen(host, port)
        stack.callback(listener.close)
        service = Service(
            sides[first], limits, metrics, any_model=any_model,
            others=tuple(side.model for side in sides if side is not sides[first]),
        )  # fmt: skip
        app = build_app(service)
        config = uvicorn.Config(
            app, log_config=None, access_log=False, log_level="warning",
            timeout_graceful_shutdown=30, lifespan="off",
        )  # fmt: skip
        bound_host, bound_port = listener.getsockname()[:2]
        for side in sides:
            side.batcher.start()
            stack.callback(side.batcher.stop)
        if follower is not None:
            follower.start(lambda candidate: setattr(service, "side", sides[int(candidate)]))
        names = ", ".join(name for model in models for name in model.names)
        announce(
            f"serving {service.model.id} ({engines[first].uri}) on http://{bound_host}:"
            f"{bound_port}, {service.model.dims} dimensions, fingerprint "
            f"sha256:{service.model.fingerprint_sha256}; "
            + ("any model name" if any_model else f"model names: {names}")
            + (_following(follower) if follower is not None else "")
        )
        with _exit_quietly_on_signals():
            uvicorn.Server(config).run(sockets=[listener])


def _followed(follower: Follower) -> list[str]:
    """(baseline, candidate) engine URIs of the followed job."""
    return [str(follower.job.baseline_uri), follower.job.candidate_uri]


def _following(follower: Follower) -> str:
    side = "candidate" if follower.candidate else "baseline"
    return (
        f"; following re-index job {follower.job.short} ({side} now; the other at its"
        " next cutover or rollback)"
    )


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
