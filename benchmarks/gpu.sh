#!/usr/bin/env bash
# Every GPU check and benchmark of sdcompose, in one go of under 8 minutes on one H100/H200-class GPU.
# Writes to $OUT (default: a temporary folder): env.txt, gpu-tests.txt, bench.log, results.json,
# results.md, plot.png, anchor.json, anchor.log.
#
# The GPU machine has no network: first, where pip reaches PyPI, run `bash benchmarks/wheels.sh`
# (fills the git-ignored .whl/), then carry .whl along. Through this workplace's device tool:
#   run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540)
# Order: install, GPU correctness tests (tiny models), the benchmark (sdcompose next to plain
# diffusers, --vram 2GB CLI check, fast mode cold/warm, SDXL, memory modes), the plot, then the
# reference script of plain diffusers with whatever time is left.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
TOTAL=${SDCOMPOSE_GPU_SECONDS:-470}
left() { echo $(( TOTAL - ($(date +%s) - START) )); }
OUT=${OUT:-$(mktemp -d)}
export OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SDCOMPOSE_HOME=${SDCOMPOSE_HOME:-/tmp/sdcompose-home}
export SDCOMPOSE_MODELS_YAML=$SDCOMPOSE_HOME/no-user-models.yaml

# The machine is lent for this run alone: install into its Python (torch is already there).
python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl || { echo "wheels missing: run benchmarks/wheels.sh"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== GPU tests ($(left) s left)"
timeout 120 python3 -m pytest -q -m gpu -k "not compiled" -p no:cacheprovider tests/test_memory_fast.py tests/test_memory_gpu.py \
  > "$OUT/gpu-tests.txt" 2>&1
tail -5 "$OUT/gpu-tests.txt"

echo "== benchmark ($(left) s left)"
timeout $(( $(left) - 45 )) python3 benchmarks/run.py --out "$OUT" --budget $(( $(left) - 75 )) 2>&1 \
  | grep -v -i "warn" | tee "$OUT/bench.log"
python3 benchmarks/plot.py "$OUT/results.json" "$OUT/plot.png" || echo "no plot"

if [ "$(left)" -gt 40 ]; then
  echo "== plain diffusers reference script ($(left) s left)"
  timeout $(( $(left) - 5 )) python3 benchmarks/diffusers_baseline.py > "$OUT/anchor.log" 2>&1
  tail -3 "$OUT/anchor.log"
fi
echo "done in $(( $(date +%s) - START )) s; results in $OUT"
