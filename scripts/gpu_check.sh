#!/usr/bin/env bash
# The device check (issue #18 item 5) on a machine with a GPU, from any directory:
#   bash scripts/gpu_check.sh          # `make setup CUDA=$CUDA` (default cu128), then the suite
#   bash scripts/gpu_check.sh setup    # only the setup
#   bash scripts/gpu_check.sh bench    # only the suite, with $PY (default .venv/bin/python)
# The suite, `ocp-graphpar bench --suite configs/bench/gpu.yml` (under 8 minutes on one H200),
# writes benchmarks_gpu.md, benchmarks_gpu.json and gpu_check.log into $OUT when set, else
# docs/, and exits non-zero when the graph-parallel check on the GPU fails. It reads OC20
# frames from ../shared/data/oc20_mini; a shared/ folder in the checkout stands in for it.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:-all}"
out="${OUT:-docs}"
PY="${PY:-.venv/bin/python}"
mkdir -p "$out"

if [[ "$stage" == all || "$stage" == setup ]]; then
  SECONDS=0
  make setup CUDA="${CUDA:-cu128}"
  echo "setup took ${SECONDS} s"
fi
if [[ "$stage" == all || "$stage" == bench ]]; then
  if [[ ! -d ../shared/data/oc20_mini && -d shared/data/oc20_mini ]]; then
    ln -s "$PWD/shared" ../shared
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  "$PY" -c 'import sys, torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU visible: {ok}")
sys.exit(0 if ok else "torch sees no GPU: a CUDA build is needed (make setup CUDA=cu128)")'
  SECONDS=0
  PYTHONUNBUFFERED=1 "$PY" -m ocp_graphpar.cli bench --suite configs/bench/gpu.yml --out "$out" \
    2>&1 | tee "$out/gpu_check.log"
  echo "bench took ${SECONDS} s"
fi
