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
"$VENV/bin/python" -m pip install --quiet --upgrade pip wheel
if ! "$VENV/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
  echo "turnout: installing llama-cpp-python (compiled from source on first install: ~8 min on 2 cores; later installs reuse pip's wheel cache)"
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  "$VENV/bin/python" -m pip install -v "llama-cpp-python==0.3.36" 2>&1 \
    | sed -u -nE 's/^ *\[([0-9]+)\/([0-9]+)\] .*/  llama.cpp build: step \1 of \2/p; s/^(Successfully installed.*)/  \1/p; /(ERROR|error:)/p'
fi
echo "turnout: installing turnout and its dependencies"
"$VENV/bin/python" -m pip install --progress-bar on -e '.[dev,router,guards,scale]'
echo "turnout: installed. Try: $VENV/bin/turnout serve"
