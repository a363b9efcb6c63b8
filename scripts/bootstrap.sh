#!/usr/bin/env bash
# Set up .venv with the given extras (default: demo) and llama.cpp's GGUF converter.
#
# Everything comes from PyPI: the project and its dependencies, and llama-cpp-python's
# source archive, whose vendor/llama.cpp holds convert_hf_to_gguf.py and gguf-py. The
# first run builds llama-cpp-python from source (a few minutes on 2 cores); pip caches
# the wheel, so later runs take seconds.
set -euo pipefail
extras=${1:-demo}
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
# The CPU build of torch first, so that no dependency pulls a multi-GB CUDA build.
"${pip[@]}" install -q torch==2.13.0
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "${pip[@]}" install -q -e ".[${extras}]"

guard_home=${GUARD_HOME:-$HOME/.local/share/guard}
src=${GUARD_LLAMACPP_SRC:-$guard_home/src/llama.cpp}
if [ ! -f "$src/convert_hf_to_gguf.py" ]; then
  tmp=$(mktemp -d)
  "${pip[@]}" download -q --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==0.3.36
  tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
  mkdir -p "$(dirname "$src")"
  rm -rf "$src"
  mv "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp "$src"
  rm -rf "$tmp"
fi
