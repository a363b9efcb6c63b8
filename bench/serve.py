"""`guard serve` against the same engine in-process: throughput under concurrent clients
as a ratio (goal >= 0.9), and the latency of one short text at idle.

    python bench/serve.py [--engine URI] [--texts N] [--clients 16] [--idle 200]

The in-process figure is one ``engine.embed`` over all texts (the engine's own batching);
the served one is CLIENTS threads posting /v1/embeddings requests of 1 (then 8) texts
each to a `guard serve` process on the same engine. Prints the figures. Not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from guard.corpus import demo_corpus
from guard.engines import open_engine
from guard.models import build_demo_models, default_models_dir


def in_process(uri: str, texts: Sequence[str]) -> float:
    engine = open_engine(uri)
    try:
        engine.embed(texts[:8])  # load and warm up
        started = time.perf_counter()
        engine.embed(texts)
        return len(texts) / (time.perf_counter() - started)
    finally:
        engine.close()


def start(uri: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-c", "from guard.cli import main; main()",
         "serve", "--engine", uri, "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    found = re.search(r" on (http://[\d.]+:\d+)", process.stderr.readline())
    if found is None:
        process.kill()
        sys.exit(f"guard serve did not start: {process.stderr.read()}")
    return process, found.group(1)


def served(url: str, texts: Sequence[str], clients: int, per_request: int) -> float:
    requests = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    shares = [requests[i::clients] for i in range(clients)]

    def client(share: list[Sequence[str]]) -> None:
        with httpx.Client(base_url=url, timeout=600) as http:
            for inputs in share:
                http.post("/v1/embeddings", json={"input": list(inputs)}).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    return len(texts) / (time.perf_counter() - started)


def idle_latency(url: str, count: int) -> np.ndarray:
    seconds = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(count):
            started = time.perf_counter()
            http.post("/v1/embeddings", json={"input": "where is the re-index runbook?"})
            seconds.append(time.perf_counter() - started)
    return np.array(seconds) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default=None, help="engine URI (default: the demo F16)")
    parser.add_argument("--texts", type=int, default=400, help="corpus paragraphs")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--idle", type=int, default=200, help="requests for the idle latency")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    uri = args.engine or f"llamacpp:{build_demo_models(default_models_dir())['F16']}"
    texts = demo_corpus(args.texts)

    baseline = in_process(uri, texts)
    print(f"{len(texts)} texts, {uri}")
    print(f"in-process: {baseline:.1f} texts/s")
    process, url = start(uri)
    try:
        served(url, texts[:32], args.clients, 1)  # warm up connections and the engine
        for per_request in (1, 8):
            rate = served(url, texts, args.clients, per_request)
            print(
                f"served, {args.clients} clients x {per_request} text(s)/request: "
                f"{rate:.1f} texts/s, ratio {rate / baseline:.2f} (goal >= 0.9)"
            )
        latency = idle_latency(url, args.idle)
        p50, p99 = np.percentile(latency, [50, 99])
        print(f"idle, one short text: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({args.idle} requests)")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
