#!/usr/bin/env bash
# Creates .venv and installs ocp-graphpar with the versions pinned in requirements.txt.
# Idempotent: each stage checks what the venv already has, and pip's wheel cache keeps the
# from-source builds of torch-scatter and torch-sparse (for the pinned CPU torch), so a rerun, or
# a fresh venv, takes seconds to minutes.
#
# Settings (environment variables; `make setup` passes PYTHON, VENV and CUDA through):
#   PYTHON=python3.11  the interpreter that creates the venv
#   VENV=DIR           where to install (default .venv); an existing environment with bin/python,
#                      a conda env say, is installed into as it is, and keeps its torch
#   CUDA=cu128         a CUDA torch from https://download.pytorch.org/whl/cu128 instead of the CPU
#                      build, and torch-scatter/torch-sparse compiled with CUDA (needs nvcc)
#   SETUP_DRY_RUN=1    print the commands that would change something instead of running them
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CUDA=${CUDA:-}
REQ=requirements.txt
pin() { grep -E "^$1==" "$REQ" | head -n1; }
staged='^(torch|torch-scatter|torch-sparse|fairchem-core)=='
die() { echo "setup: $*" >&2; exit 1; }

dry_run=0
[ "${SETUP_DRY_RUN:-0}" = 0 ] || dry_run=1
# Every command that changes something goes through run, so that SETUP_DRY_RUN=1 shows the plan.
run() {
  if [ "$dry_run" = 1 ]; then echo "setup: would run:$(printf ' %q' "$@")"; else "$@"; fi
}

# CUDA names one of PyTorch's wheel indexes: cu128 is CUDA 12.8. Checked first, before any work.
cuda_wanted=
if [ -n "$CUDA" ]; then
  [[ $CUDA =~ ^cu([0-9]{2})([0-9])$ ]] \
    || die "CUDA=$CUDA is not a PyTorch CUDA wheel index such as cu126 or cu128 (https://download.pytorch.org/whl/); leave CUDA unset for the CPU build"
  cuda_wanted="$((10#${BASH_REMATCH[1]})).${BASH_REMATCH[2]}"
fi

# The CUDA toolkit that compiles the kernels of torch-scatter and torch-sparse for torch's CUDA
# version $1: $CUDA_HOME (or $CUDA_PATH) when set, else the toolkit of the nvcc on PATH, else
# /usr/local/cuda. It is exported as CUDA_HOME, since torch's own guess (the folder above the nvcc
# on PATH) is wrong when that nvcc is a wrapper script or a symlink. $2 and $3: what else the user
# can do when the toolkit's version does not match, and when there is none.
cuda_toolkit() {
  local want=$1 if_other=$2 if_none=$3 homes=() home nvcc release
  if [ -n "${CUDA_HOME:-${CUDA_PATH:-}}" ]; then
    homes=("${CUDA_HOME:-$CUDA_PATH}")
  else
    if nvcc=$(command -v nvcc); then homes+=("$(dirname "$(dirname "$(readlink -f "$nvcc")")")"); fi
    homes+=(/usr/local/cuda)
  fi
  for home in "${homes[@]}"; do
    if [ -x "$home/bin/nvcc" ] && [ -e "$home/include/cuda_runtime_api.h" ]; then
      release=$("$home/bin/nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
      # torch refuses to build an extension with an nvcc of another major version than its own.
      [ "${release%%.*}" = "${want%%.*}" ] \
        || die "$home/bin/nvcc is CUDA $release, torch's CUDA is $want: their major versions must match. Install a CUDA ${want%%.*}.x toolkit and set CUDA_HOME to it$if_other"
      export CUDA_HOME=$home
      echo "setup: CUDA toolkit $CUDA_HOME (nvcc $release) for torch's CUDA $want"
      return
    fi
  done
  die "no CUDA toolkit (bin/nvcc and include/cuda_runtime_api.h) in: ${homes[*]}. torch-scatter and torch-sparse need one to compile their kernels for torch's CUDA $want: install a CUDA ${want%%.*}.x toolkit and set CUDA_HOME to it (or put its bin/ on PATH)$if_none"
}

PY="$VENV/bin/python"
torch_facts() { "$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "")' 2>/dev/null; }
if [ -n "$CUDA" ]; then
  if facts=$(torch_facts); then
    # Stage 1 keeps an existing torch; keeping a CPU one would quietly ignore CUDA=, and replacing
    # it could break an environment someone set up on purpose: leave that choice to the user.
    read -r torch_full torch_cuda <<<"$facts"
    [ -n "$torch_cuda" ] \
      || die "CUDA=$CUDA, but $VENV already has torch $torch_full, a CPU build, which setup keeps. Remove that environment (rm -rf $VENV) or set up another one (make setup CUDA=$CUDA VENV=.venv-cuda)"
  else
    # Find the toolkit before anything is installed, and before a download of several GB.
    cuda_toolkit "$cuda_wanted" ", or pass the CUDA= index of nvcc's version" ""
  fi
fi

# 0. system packages: a C++ compiler and Python headers for the from-source builds, and venv.
need_apt=()
command -v g++ >/dev/null 2>&1 || need_apt+=(g++ make)
"$PYTHON" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_apt+=(python3-dev)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing system packages: ${need_apt[*]}"
    run apt-get update -qq && DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq "${need_apt[@]}"
  else
    die "missing system packages: ${need_apt[*]} (install them, e.g. with sudo apt-get install)"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] < (3, 13), "torch 2.13 needs Python 3.10+ and fairchem-core 1.10 Python up to 3.12"' \
    || die "$PYTHON is not a supported Python; set PYTHON=python3.11"
  echo "setup: creating $VENV"
  run "$PYTHON" -m venv "$VENV"
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# 1. torch: keep one that is already there (e.g. a CUDA build), else the pinned version: the CPU
#    build, or with CUDA=cuXYZ the CUDA build from PyTorch's index.
torch_pin=$(pin torch)
if facts=$(torch_facts); then
  read -r torch_full torch_cuda <<<"$facts"
  echo "setup: keeping torch $torch_full${torch_cuda:+ (CUDA $torch_cuda)}"
  if [ -n "$CUDA" ] && [ "$torch_cuda" != "$cuda_wanted" ]; then
    echo "setup: (CUDA=$CUDA asks for CUDA $cuda_wanted; the CUDA torch already there is kept)"
  fi
elif [ -n "$CUDA" ]; then
  index=https://download.pytorch.org/whl/$CUDA
  echo "setup: installing $torch_pin+$CUDA from $index"
  run "${PIP[@]}" install --index-url "$index" "$torch_pin+$CUDA" \
    || die "pip could not install $torch_pin+$CUDA from $index; $index/torch/ lists the builds there (pick another CUDA=), or install a CUDA torch into $VENV yourself and rerun"
  torch_full=${torch_pin#torch==}+$CUDA torch_cuda=$cuda_wanted
else
  echo "setup: installing $torch_pin"
  run "${PIP[@]}" install "$torch_pin"
  torch_full=${torch_pin#torch==} torch_cuda=
fi
if [ "$dry_run" = 0 ]; then
  facts=$(torch_facts) || die "torch does not import in $VENV"
  read -r torch_full torch_cuda <<<"$facts"
fi
torch_version=${torch_full%%+*}

# Constrain every later stage to the torch that is installed, so nothing replaces it.
constraints=$(mktemp)
trap 'rm -f "$constraints" "$constraints.rest"' EXIT
echo "torch==$torch_version" > "$constraints"
grep -vE "$staged" "$REQ" > "$constraints.rest"

# 2. everything that is not staged.
run "${PIP[@]}" install -q -c "$constraints" -r "$constraints.rest"

# 3. torch-scatter and torch-sparse, compiled against the installed torch; with CUDA kernels when it
#    is a CUDA build. Their setup.py compiles those only where it sees a GPU, unless FORCE_CUDA=1.
missing=()
for pkg in torch-scatter torch-sparse; do
  if "$PY" -c "import ${pkg//-/_}" 2>/dev/null; then echo "setup: $pkg present"; else missing+=("$pkg"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  build_env=(MAX_JOBS="${MAX_JOBS:-$(nproc)}")
  build_opts=(--no-build-isolation -c "$constraints")
  if [ -n "$torch_cuda" ] && [ "${FORCE_ONLY_CPU:-0}" != 1 ]; then
    cpu_only=", or set FORCE_ONLY_CPU=1 for CPU-only kernels (which fail on GPU tensors)"
    cuda_toolkit "$torch_cuda" "$cpu_only" "$cpu_only"
    build_env+=(FORCE_CUDA=1 CUDA_HOME="$CUDA_HOME")
    # Without a visible GPU torch cannot pick the GPU architectures to compile for, so take the
    # ones torch itself is built for. TORCH_CUDA_ARCH_LIST="8.0;9.0" (say) overrides, and compiles
    # faster. (Not known in a dry run of a fresh environment: torch is not there yet.)
    if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ -x "$PY" ] && [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)" = 0 ]; then
      arches=$("$PY" -c '
import re, torch
flags = " ".join(torch.cuda.get_arch_list())  # e.g. sm_80 sm_90 sm_100; needs no GPU
sm = sorted({(int(s[:-1]), int(s[-1])) for s in re.findall(r"sm_(\d+)", flags)})
print(";".join(f"{a}.{b}" for a, b in sm) + "+PTX" if sm else "")')
      [ -n "$arches" ] \
        || die "no GPU visible and torch does not name the GPU architectures it is built for: set TORCH_CUDA_ARCH_LIST to your GPUs' compute capabilities, e.g. TORCH_CUDA_ARCH_LIST=\"8.0;9.0\" for A100 and H100"
      build_env+=(TORCH_CUDA_ARCH_LIST="$arches")
    fi
  fi
  # pip's wheel cache is keyed by the source package, not by the torch a wheel was compiled
  # against: use it only with the pinned CPU torch (the default setup), build afresh for any other.
  if [ -n "$torch_cuda" ] || [ "$torch_version" != "${torch_pin#torch==}" ]; then
    build_opts+=(--no-cache-dir)
  fi
  for pkg in "${missing[@]}"; do
    echo "setup: building $(pin "$pkg") from source against torch $torch_full${torch_cuda:+ with CUDA kernels} (minutes)"
    run env "${build_env[@]}" "${PIP[@]}" install "${build_opts[@]}" "$(pin "$pkg")"
  done
fi

# 4. fairchem-core without its torch~=2.4.0 pin (its runtime requirements came in stage 2).
run "${PIP[@]}" install -q --no-deps "$(pin fairchem-core)"

# 5. the plugin itself, editable.
run "${PIP[@]}" install -q --no-deps --no-build-isolation -e .

# 6. the start-up hook through which the plugin reaches fairchem's launch path (--gp-gpus checks,
#    --submit --cpu, preemption): one line in site-packages, see ocp_graphpar/launch/startup_hook.py.
run "$PY" -m ocp_graphpar.launch.startup_hook

if [ "$dry_run" = 1 ]; then
  echo "setup: dry run, nothing changed"
  exit 0
fi
# What was installed, and whether it can use a GPU: cuda_version() is -1 for kernels without CUDA.
"$PY" - <<'EOF'
import sys

import fairchem.core  # noqa: F401
import ocp_graphpar  # noqa: F401
import torch
import torch_scatter  # noqa: F401
import torch_sparse  # noqa: F401


def kernels(ops):
    v = ops.cuda_version()
    return "CPU only" if v == -1 else f"CUDA {v // 1000}.{v % 1000 // 10}"


build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(f"setup: ok, torch {torch.__version__} ({build}, sees {gpus} GPU{'s' * (gpus != 1)}); "
      f"kernels: torch_scatter {kernels(torch.ops.torch_scatter)}, "
      f"torch_sparse {kernels(torch.ops.torch_sparse)}")
if torch.version.cuda and -1 in (torch.ops.torch_scatter.cuda_version(),
                                 torch.ops.torch_sparse.cuda_version()):
    print(f"setup: warning: torch is a CUDA build, but torch_scatter/torch_sparse have no CUDA "
          f"kernels and fail on GPU tensors; rebuild them: {sys.executable} -m pip uninstall -y "
          f"torch-scatter torch-sparse, then make setup again", file=sys.stderr)
EOF
