#!/usr/bin/env bash
# Set up .venv with the given extras (default: demo) and llama.cpp's GGUF converter.
#
# Everything comes from PyPI: the project and its dependencies, and llama-cpp-python's
# source archive, which is built into a wheel here and whose vendor/llama.cpp holds
# convert_hf_to_gguf.py and gguf-py. The first run builds llama-cpp-python (about four
# minutes on 2 cores); the wheel is cached, so later runs take seconds.
set -euo pipefail
extras=${1:-demo}
cd "$(dirname "$0")/.."

llama_version=0.3.36
# Portable x86-64 flags: -march=native would also enable AMX on CPUs that report it,
# and virtual machines that do not grant AMX then kill quantised models with SIGILL.
llama_flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
cache=${XDG_CACHE_HOME:-$HOME/.cache}/vector-migration-guard
wheelhouse=$cache/wheels/$(echo "$llama_version $llama_flags" | sha256sum | cut -c1-12)
sdist=$cache/sdist/llama_cpp_python-$llama_version.tar.gz

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip

if [ ! -f "$sdist" ]; then
  "${pip[@]}" download -q --no-deps --no-binary :all: -d "$cache/sdist" "llama-cpp-python==$llama_version"
fi
if ! compgen -G "$wheelhouse/llama_cpp_python-$llama_version-*.whl" >/dev/null; then
  CMAKE_ARGS="$llama_flags" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "${pip[@]}" wheel -q --no-deps --no-cache-dir -w "$wheelhouse" "$sdist"
fi
# The CPU build of torch first, so that no dependency pulls a multi-GB CUDA build.
"${pip[@]}" install -q torch==2.13.0
"${pip[@]}" install -q --find-links "$wheelhouse" -e ".[${extras}]"

guard_home=${GUARD_HOME:-$HOME/.local/share/guard}
src=${GUARD_LLAMACPP_SRC:-$guard_home/src/llama.cpp}
if [ ! -f "$src/convert_hf_to_gguf.py" ]; then
  tmp=$(mktemp -d)
  tar -xzf "$sdist" -C "$tmp"
  mkdir -p "$(dirname "$src")"
  rm -rf "$src"
  mv "$tmp/llama_cpp_python-$llama_version/vendor/llama.cpp" "$src"
  rm -rf "$tmp"
fi

# The screenshot tests (tests/test_screens.py) open the reports in the distribution's
# headless Chromium; nothing downloads a browser at test time.
if [[ ",$extras," == *",test,"* ]]; then
  command -v chromium >/dev/null || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq chromium
    elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo apt-get update -qq && sudo apt-get install -y -qq chromium
    else
      echo "bootstrap: the screenshot tests need Chromium; install it as root:" \
        "apt-get install -y chromium (tests/test_screens.py fails until then)" >&2
    fi
  }
fi
