#!/usr/bin/env bash
# Download the wheels gpu.sh installs on a GPU machine (which has no network) into .whl/ (git-ignored).
# Run where pip reaches PyPI, from anywhere in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl -r benchmarks/gpu-wheels.txt
ls .whl
