#!/usr/bin/env bash
# Creates .venv and installs ocp-graphpar with the versions pinned in requirements.txt.
# Idempotent: each stage checks what the venv already has, and pip's wheel cache keeps the
# from-source builds of torch-scatter and torch-sparse, so a rerun takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
REQ=requirements.txt
pin() { grep -E "^$1==" "$REQ" | head -n1; }
staged='^(torch|torch-scatter|torch-sparse|fairchem-core)=='

# 0. system packages: a C++ compiler and Python headers for the from-source builds, and venv.
need_apt=()
command -v g++ >/dev/null 2>&1 || need_apt+=(g++ make)
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_apt+=(python3-dev)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages: ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "setup: missing system packages: ${need_apt[*]} (install them, e.g. with sudo apt-get install)" >&2
    exit 1
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; assert (3, 9) <= sys.version_info[:2] < (3, 13), "fairchem-core 1.10 needs Python 3.9 to 3.12"' \
    || { echo "setup: $PYTHON is not a supported Python; set PYTHON=python3.11" >&2; exit 1; }
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# 1. torch: keep one that is already there (e.g. a CUDA build), else the pinned CPU build.
if "$PY" -c 'import torch' 2>/dev/null; then
  echo "setup: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: installing $(pin torch)"
  "${PIP[@]}" install "$(pin torch)"
fi
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')

# Constrain every later stage to the torch that is installed, so nothing replaces it.
constraints=$(mktemp)
trap 'rm -f "$constraints" "$constraints.rest"' EXIT
echo "torch==$torch_version" > "$constraints"
grep -vE "$staged" "$REQ" > "$constraints.rest"

# 2. everything that is not staged.
"${PIP[@]}" install -q -c "$constraints" -r "$constraints.rest"

# 3. torch-scatter and torch-sparse, compiled against the installed torch.
for pkg in torch-scatter torch-sparse; do
  mod=${pkg//-/_}
  if "$PY" -c "import $mod" 2>/dev/null; then
    echo "setup: $pkg present"
  else
    echo "setup: building $(pin "$pkg") from source against torch $torch_version (minutes; cached afterwards)"
    MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" install --no-build-isolation -c "$constraints" "$(pin "$pkg")"
  fi
done

# 4. fairchem-core without its torch~=2.4.0 pin (its runtime requirements came in stage 2).
"${PIP[@]}" install -q --no-deps "$(pin fairchem-core)"

# 5. the plugin itself, editable.
"${PIP[@]}" install -q --no-deps --no-build-isolation -e .

# 6. the start-up hook through which the plugin reaches fairchem's launch path (--gp-gpus checks,
#    --submit --cpu, preemption): one line in site-packages, see ocp_graphpar/launch/startup_hook.py.
"$PY" -m ocp_graphpar.launch.startup_hook

"$PY" -c 'import ocp_graphpar, fairchem.core, torch_scatter, torch_sparse, torch; print("setup: ok, torch", torch.__version__)'
