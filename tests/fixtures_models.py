"""Fixtures with real models and real embedding servers, each made once per session.

- ``demo_models``: the demo GGUF files (F16, Q8_0, Q4_0, Q4_K_M) built by
  ``guard.models.build_demo_models`` into a cache that survives between runs
  (``GUARD_MODELS_CACHE``, else ``.cache/models`` in the repository), from the llama.cpp
  sources in ``GUARD_LLAMACPP_SRC``; ``gguf_f16`` ... are their paths;
- ``onnx_models``: the ONNX FP32 and INT8 exports of ``guard.models.build_onnx_models``
  (which build-demo makes too), in the same cache; ``onnx_dir`` is their
  sentence-transformers ONNX folder;
- ``st_model_dir``: the sentence-transformers reference; ``static_model_dir``: a model2vec
  model made from it; ``gguf_unknown_arch``: the F16 file with an architecture llama.cpp
  does not know;
- ``corpus``, ``long_texts`` (over 256 tokens), ``short_texts``: demo corpus paragraphs;
- ``openai_server``: ``python -m llama_cpp.server`` serving the F16 file on a free port,
  with an API key; ``ollama_server``: the Ollama stand-in of tests/ollama_server.py.

Nothing is fetched from a hub: HF_HUB_OFFLINE is set before any test imports
huggingface_hub.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from ollama_server import OllamaStandIn

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# llama.cpp and torch each bring an OpenMP runtime whose idle threads spin; on a shared
# 2-core runner that spinning halves llama.cpp's speed (measured 10 s vs 4-5 s on the
# long texts). Read when the runtimes load, so it must be set before they are imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = [
    "OpenAIServer",
    "corpus",
    "demo_models",
    "free_port",
    "gguf_f16",
    "gguf_q4_0",
    "gguf_q4_k_m",
    "gguf_q8_0",
    "gguf_unknown_arch",
    "llama_cpp_src",
    "long_texts",
    "models_cache",
    "ollama_server",
    "onnx_dir",
    "onnx_models",
    "openai_server",
    "short_texts",
    "st_model_dir",
    "static_model_dir",
]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def models_cache() -> Path:
    return Path(os.environ.get("GUARD_MODELS_CACHE") or REPO / ".cache" / "models")


@pytest.fixture(scope="session")
def llama_cpp_src() -> Path:
    """Where scripts/bootstrap.sh puts llama.cpp's converter (or GUARD_LLAMACPP_SRC)."""
    from guard.paths import llama_cpp_src as default

    return default()


@pytest.fixture(scope="session")
def demo_models(models_cache: Path, llama_cpp_src: Path) -> dict[str, Path]:
    from guard.models import build_demo_models

    return build_demo_models(models_cache, llama_cpp_src)


@pytest.fixture(scope="session")
def gguf_f16(demo_models: dict[str, Path]) -> Path:
    return demo_models["F16"]


@pytest.fixture(scope="session")
def gguf_q8_0(demo_models: dict[str, Path]) -> Path:
    return demo_models["Q8_0"]


@pytest.fixture(scope="session")
def gguf_q4_0(demo_models: dict[str, Path]) -> Path:
    return demo_models["Q4_0"]


@pytest.fixture(scope="session")
def gguf_q4_k_m(demo_models: dict[str, Path]) -> Path:
    return demo_models["Q4_K_M"]


UNKNOWN_ARCHITECTURE = "zeta"


@pytest.fixture(scope="session")
def gguf_unknown_arch(
    gguf_f16: Path, llama_cpp_src: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the F16 GGUF whose ``general.architecture`` says ``zeta``, which
    llama.cpp does not know: rewritten in place by gguf-py (same length, so nothing
    else moves), in a subprocess because gguf-py lives in the llama.cpp sources."""
    path = tmp_path_factory.mktemp("unknown-arch") / "minilm-unknown-arch.gguf"
    shutil.copyfile(gguf_f16, path)
    script = (
        "import sys, gguf\n"
        "reader = gguf.GGUFReader(sys.argv[1], 'r+')\n"
        "field = reader.fields['general.architecture']\n"
        "field.parts[field.data[0]][:] = list(sys.argv[2].encode())\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(path), UNKNOWN_ARCHITECTURE],
        check=True,
        env={**os.environ, "PYTHONPATH": str(llama_cpp_src / "gguf-py")},
    )
    return path


@pytest.fixture(scope="session")
def onnx_models(models_cache: Path) -> dict[str, Path]:
    """ONNX_FP32 and ONNX_INT8: the model files, built once and cached by content."""
    from guard.models import build_onnx_models

    return build_onnx_models(models_cache)


@pytest.fixture(scope="session")
def onnx_dir(onnx_models: dict[str, Path]) -> Path:
    """The sentence-transformers ONNX folder holding both files (``onnx/...``)."""
    return onnx_models["ONNX_FP32"].parents[1]


@pytest.fixture(scope="session")
def st_model_dir() -> Path:
    from guard.models import reference_model_dir

    return reference_model_dir()


@pytest.fixture(scope="session")
def static_model_dir(models_cache: Path) -> Path:
    from guard.models import build_static_model

    return build_static_model(models_cache)


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    from guard.corpus import demo_corpus

    return demo_corpus()


@pytest.fixture(scope="session")
def long_texts(corpus: list[str], st_model_dir: Path) -> list[str]:
    """Every corpus paragraph longer than the reference's 256-token limit."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(st_model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    lengths = [len(encoding.ids) for encoding in tokenizer.encode_batch(corpus)]
    return [text for text, length in zip(corpus, lengths, strict=True) if length > 256]


@pytest.fixture(scope="session")
def short_texts(corpus: list[str], long_texts: list[str]) -> list[str]:
    """Forty paragraphs under the limit, spread over the corpus."""
    longs = set(long_texts)
    shorts = [text for text in corpus if text not in longs]
    return shorts[:: max(1, len(shorts) // 40)][:40]


@dataclass(frozen=True)
class OpenAIServer:
    url: str  # ends in /v1
    model: str
    api_key: str


@pytest.fixture(scope="session")
def openai_server(
    gguf_f16: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenAIServer]:
    """llama-cpp-python's OpenAI-compatible server on the F16 model, context 512 (the
    model's own), requiring an API key."""
    port = free_port()
    key = "sk-guard-test-0123456789abcdef"
    log = (tmp_path_factory.mktemp("openai") / "server.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(gguf_f16), "--model_alias", "minilm-f16",
            "--embedding", "true", "--n_ctx", "512", "--n_batch", "512",
            "--host", "127.0.0.1", "--port", str(port),
            "--api_key", key, "--verbose", "false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = OpenAIServer(f"http://127.0.0.1:{port}/v1", "minilm-f16", key)
    try:
        _wait_until_up(f"{server.url}/models", key, process)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_until_up(url: str, key: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}")
        try:
            if httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=1).is_success:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"llama_cpp.server did not answer {url} within 60 s")


@pytest.fixture(scope="session")
def ollama_server(gguf_f16: Path) -> Iterator[OllamaStandIn]:
    from ollama_server import OllamaStandIn

    server = OllamaStandIn(gguf_f16).start()
    try:
        yield server
    finally:
        server.stop()
