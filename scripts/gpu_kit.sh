#!/usr/bin/env bash
# Fills the offline kit of the GPU check (docs/gpu_check.md): everything `scripts/gpu_check.sh kit`
# installs on a GPU machine that reaches no package registry. Run it on a CPU machine that reaches
# PyPI, from any directory:
#   bash scripts/gpu_kit.sh [--no-compile] [--rehearse] [KIT]     # KIT: default gpu_kit/ (git-ignored)
# Stages, each skipped when its output is already in KIT (delete a file to redo it):
#   wheels   the `download` wheels of scripts/gpu_kit/wheels.txt, for CPython 3.12 on manylinux
#            x86-64, each without its dependencies (the GPU machine has the rest);
#   project  this repository's wheel;
#   compile  torch-scatter and torch-sparse, compiled for sm_90 (H100/H200) against torch
#            2.11.0+cu130 in a Python 3.12 environment outside the kit ($GPU_KIT_VENV; torch and its
#            CUDA libraries are several GB there); about 40 minutes on one core; --no-compile skips it;
#   frames   the OC20 frames configs/bench/gpu.yml reads, from ../shared/data/oc20_mini;
# then KIT/SHA256SUMS and the kit's size, failing over 60 MiB (a GPU run carries at most 64 MiB,
# the repository's tracked files included).
# --rehearse then installs the kit into that Python 3.12 environment, completed with the GPU
# machine's other packages (scripts/gpu_kit/device_stack.txt), exactly as the GPU machine will
# (`gpu_check.sh kit`), and runs the suite on CPU at tiny widths (--device cpu --tiny).
#
# Settings (environment variables):
#   GPU_KIT_DRY_RUN=1  print the commands that would change something, run none of them
#   PYTHON             the interpreter whose pip downloads and builds the project wheel (python3)
#   PYTHON312          a Python 3.12 for the compile (default: python3.12 on PATH, pyenv's, uv's)
#   GPU_KIT_VENV       the Python 3.12 environment (default ~/.cache/ocp_graphpar/gpu_kit_py312)
#   MAX_JOBS           parallel compile jobs (default: all cores)
#   CUDA_HOME          the CUDA 13 toolkit (default: /usr/local/cuda, else the nvcc on PATH)
#   OC20_MINI          where the frames come from (default ../shared/data/oc20_mini)
#   REHEARSAL_OUT      where --rehearse writes its report (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
LIST=scripts/gpu_kit/wheels.txt
STACK=scripts/gpu_kit/device_stack.txt
SUITE=configs/bench/gpu.yml
MAX_MIB=60
# The GPU machine's interpreter and platform, for pip's --python-version/--platform.
TARGET_PIP=(--only-binary=:all: --implementation cp --python-version 3.12 --abi cp312
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
            --platform manylinux2014_x86_64)

compile=1 rehearse=0 kit=gpu_kit
for arg in "$@"; do
  case $arg in
    --no-compile) compile=0 ;;
    --rehearse) rehearse=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_kit: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) kit=$arg ;;
  esac
done
kit=$(realpath -m "$kit")
wheels=$kit/wheels
PYTHON=${PYTHON:-python3}
venv=${GPU_KIT_VENV:-$HOME/.cache/ocp_graphpar/gpu_kit_py312}
vpy=$venv/bin/python

die() { echo "gpu_kit: $*" >&2; exit 1; }
scratch=()  # temporary folders, removed however the script ends
trap 'rm -rf "${scratch[@]}"' EXIT
say() { echo "gpu_kit: $*"; }
dry_run=0
[ "${GPU_KIT_DRY_RUN:-0}" = 0 ] || dry_run=1
# Every command that changes something goes through run, so that GPU_KIT_DRY_RUN=1 shows the plan.
run() {
  if [ "$dry_run" = 1 ]; then echo "gpu_kit: would run:$(printf ' %q' "$@")"; else "$@"; fi
}
# The list's entries of one kind, "requirement file module" a line (comments and blanks dropped).
entries() { awk -v how="$1" '$1 == how { print $2, $3, $4 }' "$LIST"; }
# The stand-in stack's pin of one package, e.g. torch==2.11.0.
stack_pin() { sed 's/#.*//' "$STACK" | awk -v n="$1" -F'[=<>! ]' '$1 == n { print $0; exit }' | tr -d ' '; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

say "kit $kit$([ "$dry_run" = 1 ] && echo ' (dry run: nothing is changed)')"
[ "$dry_run" = 1 ] || mkdir -p "$wheels"

# 1. wheels: one pip download for all that are missing; pip names the file, the list pins it.
SECONDS=0
missing=() expected=()
while read -r spec file _; do
  [ -f "$wheels/$file" ] || { missing+=("$spec"); expected+=("$file"); }
done < <(entries download)
if [ ${#missing[@]} -eq 0 ]; then
  say "wheels: all $(entries download | wc -l) present"
else
  say "wheels: downloading ${#missing[@]} for CPython 3.12, manylinux x86-64"
  run "$PYTHON" -m pip download --no-deps --progress-bar off "${TARGET_PIP[@]}" -d "$wheels" "${missing[@]}"
  if [ "$dry_run" = 0 ]; then
    for file in "${expected[@]}"; do
      [ -f "$wheels/$file" ] \
        || die "pip did not fetch $file (got: $(ls "$wheels")); update $LIST to the file PyPI has"
    done
  fi
  say "wheels: ${SECONDS} s"
fi

# 2. project: built from a copy of the package's sources, since pip builds a local folder in
# place and would leave a build/ folder in the checkout (which the GPU run would carry).
SECONDS=0
read -r spec file _ < <(entries project)
if [ -f "$wheels/$file" ]; then
  say "project: $file present"
else
  sources=SOURCES
  if [ "$dry_run" = 0 ]; then sources=$(mktemp -d); scratch+=("$sources"); fi
  say "project: building $file"
  run cp -r pyproject.toml setup.cfg README.md LICENSE ocp_graphpar "$sources/"
  run "$PYTHON" -m pip wheel --no-deps -q -w "$wheels" "$sources"
  [ "$dry_run" = 1 ] || [ -f "$wheels/$file" ] \
    || die "the project's wheel is not $file: update $LIST to setup.cfg's version"
  say "project: ${SECONDS} s"
fi

# 3. compile: torch-scatter and torch-sparse for the GPU machine's torch. PyPI's torch==2.11.0
# x86-64 wheel is that machine's build (2.11.0+cu130), so the kernels are compiled here against it
# with this machine's nvcc 13, for the H200's sm_90 only (FORCE_ONLY_CUDA: no GPU is visible here,
# and the CPU-only variant is not needed beside the CUDA one, which holds the CPU kernels too).
find_python312() {
  local candidate
  for candidate in "${PYTHON312:-}" "$(command -v python3.12 || true)" \
      "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
      "$(command -v uv >/dev/null && uv python find 3.12 2>/dev/null || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}
# The Python 3.12 environment, with the listed packages of the stand-in stack.
venv_with() {
  if [ ! -x "$vpy" ]; then
    if ! py312=$(find_python312); then
      [ "$dry_run" = 1 ] \
        || die "no Python 3.12 found: set PYTHON312, or install one (e.g. pip install uv; uv python install 3.12)"
      py312=python3.12
    fi
    say "creating $venv with $py312"
    run "$py312" -m venv "$venv"
  fi
  run "$vpy" -m pip install -q "$@"
}
cuda_home() {
  local home=${CUDA_HOME:-}
  if [ -z "$home" ]; then
    if [ -x /usr/local/cuda/bin/nvcc ]; then home=/usr/local/cuda
    elif command -v nvcc >/dev/null; then home=$(dirname "$(dirname "$(realpath "$(command -v nvcc)")")")
    fi
  fi
  [ -n "$home" ] && [ -x "$home/bin/nvcc" ] || die "no CUDA toolkit (nvcc): set CUDA_HOME to a CUDA 13 toolkit"
  "$home/bin/nvcc" --version | grep -q 'release 13\.' \
    || die "$home/bin/nvcc is not CUDA 13, which torch 2.11.0+cu130 needs"
  echo "$home"
}

# What the GPU machine will load: sm_90 machine code in each package, and torch 2.11 loading both
# with CUDA kernels (cuda_version() is 0 in a CPU-only build). Needs no GPU; seconds.
verify_compiled() {
  local probe pkg lib cuobjdump
  # nvcc's toolkit may come without cuobjdump; triton (a torch dependency) ships one.
  cuobjdump=$(command -v "${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump" cuobjdump \
    "$venv"/lib/python3.12/site-packages/triton/backends/nvidia/bin/cuobjdump | head -n1 || true)
  [ -n "$cuobjdump" ] || die "no cuobjdump found to check the compiled code"
  venv_with "$(stack_pin numpy)" scipy  # torch_sparse imports both
  probe=$(mktemp -d)
  scratch+=("$probe")
  "$vpy" -m pip install -q --no-deps --no-index --target "$probe" "$wheels"/torch_scatter-*.whl \
    "$wheels"/torch_sparse-*.whl
  for pkg in torch_scatter torch_sparse; do  # some of their libraries hold no kernels
    for lib in "$probe/$pkg"/*.so; do "$cuobjdump" --list-elf "$lib" 2>/dev/null || true; done \
      | grep -q '\.sm_90\.cubin' || die "no sm_90 code in $pkg"
  done
  PYTHONPATH=$probe "$vpy" -c 'import torch, torch_scatter, torch_sparse
s, p = torch.ops.torch_scatter.cuda_version(), torch.ops.torch_sparse.cuda_version()
print(f"gpu_kit: compile: torch {torch.__version__} loads torch_scatter {torch_scatter.__version__} (CUDA {s}) and torch_sparse {torch_sparse.__version__} (CUDA {p}), sm_90 code in both")
assert s > 0 and p > 0, "built without CUDA kernels"'
}

SECONDS=0
todo=() todo_specs=()
while read -r spec file _; do
  [ -f "$wheels/$file" ] || { todo+=("$spec $file"); todo_specs+=("$spec"); }
done < <(entries compile)
if [ ${#todo[@]} -eq 0 ]; then
  say "compile: torch-scatter and torch-sparse present"
elif [ "$compile" = 0 ]; then
  say "compile: skipped (--no-compile); the kit lacks ${todo_specs[*]}"
else
  torch_pin=$(stack_pin torch)
  if [ "$dry_run" = 1 ]; then
    py312=$(find_python312) || py312="none found (set PYTHON312)"
    say "compile: Python 3.12: $py312; environment $venv"
    venv_with "$torch_pin" "$(stack_pin numpy)" setuptools wheel ninja
    cuda=${CUDA_HOME:-/usr/local/cuda}
    inc="$venv/lib/python3.12/site-packages/nvidia/cu13/include"
  else
    venv_with "$torch_pin" "$(stack_pin numpy)" setuptools wheel ninja
    "$vpy" -c 'import sys, torch; sys.exit(not torch.__version__.startswith("2.11.0") or torch.version.cuda.split(".")[0] != "13")' \
      || die "$venv has torch $("$vpy" -c 'import torch; print(torch.__version__)'), not 2.11.0 with CUDA 13"
    cuda=$(cuda_home)
    # nvcc 13 here lacks the cuBLAS/cuSPARSE headers torch's headers include; torch's own CUDA
    # packages ship them, and torch's extension builder adds CUDA_INC_PATH to the include path.
    inc="$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu13/include"
    [ -f "$inc/cublas_v2.h" ] || die "no cuBLAS headers in $inc"
  fi
  for item in "${todo[@]}"; do
    read -r spec file <<<"$item"
    say "compile: $spec for sm_90 against $torch_pin (MAX_JOBS=${MAX_JOBS:-$(nproc)}; minutes)"
    # --no-cache-dir: pip's wheel cache does not know these flags, and could hand back a build
    # made for another torch or without CUDA.
    run env FORCE_ONLY_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 CUDA_HOME="$cuda" CUDA_INC_PATH="$inc" \
      MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$vpy" -m pip wheel --no-deps --no-build-isolation \
      --no-cache-dir --no-binary "${spec%%==*}" -w "$wheels" "$spec"
    [ "$dry_run" = 1 ] || [ -f "$wheels/$file" ] || die "the build of $spec did not write $file"
  done
  say "compile: ${SECONDS} s"
fi
compiled=1
while read -r spec file _; do [ -f "$wheels/$file" ] || compiled=0; done < <(entries compile)
if [ "$dry_run" = 0 ] && [ "$compiled" = 1 ]; then
  if [ -x "$vpy" ]; then verify_compiled; else say "compile: not verified here ($venv is gone)"; fi
fi

# 4. frames: the files the suite names (frame 0 of each is read), under their own names.
SECONDS=0
src=${OC20_MINI:-../shared/data/oc20_mini}
frames=$(grep -oE '\.\./shared/data/oc20_mini/[A-Za-z0-9_.-]+' "$SUITE" | sort -u | xargs -n1 basename)
[ -n "$frames" ] || die "$SUITE names no frames under ../shared/data/oc20_mini"
for frame in $frames; do
  if [ -f "$kit/oc20_mini/$frame" ]; then continue; fi
  [ "$dry_run" = 1 ] || [ -f "$src/$frame" ] || die "$src/$frame not found (set OC20_MINI)"
  run install -D -m 644 "$src/$frame" "$kit/oc20_mini/$frame"
done
say "frames: $(echo "$frames" | wc -l) files for $SUITE (${SECONDS} s)"

[ "$dry_run" = 0 ] || exit 0

# Checksums for gpu_check.sh, and the size. Wheels the list does not name are reported: the check
# ignores them, but they still travel.
(cd "$kit" && sha256sum wheels/*.whl oc20_mini/* >SHA256SUMS)
for have in "$wheels"/*.whl; do
  grep -qF " $(basename "$have") " "$LIST" || say "warning: $have is not in $LIST; remove it (it travels for nothing)"
done
total=$(du -sb "$kit" | cut -f1)
say "size: $(mib "$total") in all; wheels $(mib "$(du -cb "$wheels"/*.whl | tail -1 | cut -f1)"), frames $(mib "$(du -sb "$kit/oc20_mini" | cut -f1)")"
[ "$total" -le $((MAX_MIB * 1048576)) ] || die "the kit is over $MAX_MIB MiB"
[ "$compiled" = 1 ] || say "not complete: torch-scatter/torch-sparse are missing (run without --no-compile)"

# Rehearsal: the GPU machine's install and suite, on CPU.
if [ "$rehearse" = 1 ]; then
  [ "$compiled" = 1 ] || die "--rehearse needs the compiled wheels"
  venv_with -r "$STACK"
  out=${REHEARSAL_OUT:-$(mktemp -d)}
  target=$(mktemp -d)
  scratch+=("$target")
  say "rehearsal: gpu_check.sh kit with $vpy, on CPU at tiny widths, report in $out"
  PY=$vpy KIT=$kit TARGET=$target/site OUT=$out BENCH_ARGS="--device cpu --tiny" \
    bash "$REPO/scripts/gpu_check.sh" kit
fi
