"""Engines on the device asked for: an explicit CPU works and is recorded in the
fingerprint; a GPU that is not there is one line and exit 2, never a silent CPU run.

This machine has no GPU: the refusals are pinned here, and each skips where the device
exists (a GPU runner then exercises the same URIs for real through the contract suite).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import torch

from guard.engines import open_engine
from guard.errors import ConfigError

pytestmark = pytest.mark.slow

TEXTS = ["a lighthouse keeper counts ships", "the recipe needs two eggs", "rain over the bay"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a CUDA GPU")
no_offload = pytest.mark.skipif(
    llama_cpp.llama_supports_gpu_offload(), reason="this llama-cpp-python can offload"
)


def test_st_explicit_cpu_is_the_default_and_the_fingerprint_says_so(st_model_dir: Path) -> None:
    with (
        open_engine(f"st:{st_model_dir}") as default,
        open_engine(f"st:{st_model_dir}?device=cpu") as cpu,
    ):
        assert np.array_equal(default.embed(TEXTS), cpu.embed(TEXTS))
        assert (default.fingerprint()["settings"]["device"], cpu.fingerprint()) == (
            "cpu",
            default.fingerprint(),
        )


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_st_cuda_without_a_cuda_torch_is_refused(st_model_dir: Path, device: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_engine(f"st:{st_model_dir}?device={device}")
    assert f"device={device} asked, but torch {torch.__version__} is a CPU-only build" in str(
        raised.value
    )


def test_st_cuda_index_beyond_the_gpus_is_refused(st_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"device=cuda:64 asked, but torch"):
        open_engine(f"st:{st_model_dir}?device=cuda:64")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this torch sees an Apple GPU")
def test_st_mps_without_an_apple_gpu_is_refused(st_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"device=mps asked, but torch .* sees no Apple GPU"):
        open_engine(f"st:{st_model_dir}?device=mps")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CUDA", "cpu "])
def test_st_unknown_device_is_refused(st_model_dir: Path, device: str) -> None:
    with pytest.raises(ConfigError, match=r"option device must be cpu, cuda, cuda:N or mps"):
        open_engine(f"st:{st_model_dir}?device={device}")


def test_llamacpp_explicit_cpu_embeds_the_same_and_the_fingerprint_says_so(
    gguf_f16: Path,
) -> None:
    with (
        open_engine(f"llamacpp:{gguf_f16}") as default,
        open_engine(f"llamacpp:{gguf_f16}?n_gpu_layers=0") as cpu,
    ):
        assert np.array_equal(default.embed(TEXTS), cpu.embed(TEXTS))
        settings = cpu.fingerprint()["settings"]
        assert (settings["device"], settings["n_gpu_layers"], cpu.fingerprint()) == (
            "cpu",
            0,
            default.fingerprint(),
        )


@no_offload
@pytest.mark.parametrize("layers", ["-1", "8"])
def test_llamacpp_offload_without_a_gpu_build_is_refused(gguf_f16: Path, layers: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_engine(f"llamacpp:{gguf_f16}?n_gpu_layers={layers}")
    message = str(raised.value)
    assert (f"n_gpu_layers={layers} asked" in message, "-DGGML_CUDA=on" in message) == (True, True)


@pytest.mark.parametrize("layers", ["-2", "all"])
def test_llamacpp_bad_gpu_layers_are_refused(gguf_f16: Path, layers: str) -> None:
    with pytest.raises(ConfigError, match=r"option n_gpu_layers must be"):
        open_engine(f"llamacpp:{gguf_f16}?n_gpu_layers={layers}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", "from guard.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@no_cuda
@no_offload
def test_a_gpu_asked_for_and_not_there_is_one_line_and_exit_2(
    st_model_dir: Path, gguf_f16: Path
) -> None:
    """Through the command line: one line on stderr naming the option, no traceback."""
    for engine, says in [
        (f"st:{st_model_dir}?device=cuda", "device=cuda asked"),
        (f"llamacpp:{gguf_f16}?n_gpu_layers=-1", "n_gpu_layers=-1 asked"),
    ]:
        result = _cli("serve", "--engine", engine, "--port", "0")
        err = result.stderr
        assert (result.returncode, len(err.strip().splitlines()), says in err) == (2, 1, True), err
