"""Where the guard keeps its local data: GUARD_HOME (default ~/.local/share/guard)."""

from __future__ import annotations

import os
from pathlib import Path


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
