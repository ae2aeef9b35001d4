#!/usr/bin/env bash
# The GPU check (docs/gpu_check.md): the suite configs/bench/gpu.yml on a machine with a GPU, run
# from any directory. Modes:
#   bash scripts/gpu_check.sh kit      # offline, for a GPU machine that reaches no package registry:
#                                      # install the kit scripts/gpu_kit.sh filled into $TARGET, print
#                                      # versions, run the suite with $PY (default python3) in 480 s
#   bash scripts/gpu_check.sh install  # only the kit's install and the versions
#   bash scripts/gpu_check.sh          # with a package registry: `make setup CUDA=$CUDA` (default
#                                      # cu128), then the suite
#   bash scripts/gpu_check.sh setup    # only that setup
#   bash scripts/gpu_check.sh bench    # only the suite, with $PY (default .venv/bin/python)
# The suite writes benchmarks_gpu.md, benchmarks_gpu/ and gpu_check.log into $OUT when set, else
# docs/; then scripts/gp_device_check.py writes gp_device_check.md and .json there, and the script
# exits non-zero when the graph-parallel check on the GPU fails (124 when the suite ran out of time). Kit mode reads the kit's OC20 frames; the others read ../shared/data/oc20_mini,
# for which a shared/ folder in the checkout stands in.
#
# Settings (environment variables):
#   KIT=gpu_kit                   the kit (relative to the repository root, or absolute)
#   TARGET=/tmp/ocp_graphpar_kit  where kit mode installs its wheels
#   GPU_CHECK_TIMEOUT=SECONDS     the suite's time limit: 480 in kit mode, else none (0: none)
#   BENCH_ARGS="..."              more `ocp-graphpar bench` options; "--device cpu --tiny"
#                                 rehearses kit mode on CPU (scripts/gpu_kit.sh --rehearse)
#   GPU_CHECK_DRY_RUN=1           check the kit, print the install and suite commands, run neither
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
stage="${1:-all}"
out="${OUT:-docs}"
LIST=scripts/gpu_kit/wheels.txt
SUITE=configs/bench/gpu.yml
# The kit is for the GPU machine's interpreter and platform. pip checks each wheel against these
# instead of the interpreter that runs it, which lets CI install a kit with another Python.
TARGET_PIP=(--only-binary=:all: --implementation cp --python-version 3.12 --abi cp312
            --platform linux_x86_64 --platform manylinux_2_28_x86_64
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

case $stage in
  all|setup|bench) PY="${PY:-.venv/bin/python}" limit=${GPU_CHECK_TIMEOUT:-0} ;;
  kit|install) PY="${PY:-python3}" limit=${GPU_CHECK_TIMEOUT:-480} ;;
  *) echo "gpu_check: unknown mode $stage (kit, install, setup, bench; none: setup and bench)" >&2; exit 2 ;;
esac
read -ra bench_args <<<"${BENCH_ARGS:-}"
die() { echo "gpu_check: $*" >&2; exit 1; }
dry_run=0
[ "${GPU_CHECK_DRY_RUN:-0}" = 0 ] || dry_run=1
# Every command that installs or measures goes through run, so that a dry run shows the plan.
run() {
  if [ "$dry_run" = 1 ]; then echo "gpu_check: would run:$(printf ' %q' "$@")"; else "$@"; fi
}
[ "$dry_run" = 1 ] || mkdir -p "$out"

# The kit's wheels, in the list's order, installed with --no-deps and nothing else, so that the
# machine's own torch, numpy and torch-geometric stay the ones that run; then each listed module
# imported from where it must come from (python3 - below).
install_kit() {
  kit=$(realpath -m "${KIT:-gpu_kit}")
  TARGET=$(realpath -m "${TARGET:-/tmp/ocp_graphpar_kit}")
  [ -d "$kit" ] || die "no kit at $kit: fill it with scripts/gpu_kit.sh on a machine with PyPI"
  local how spec file module files=() missing=()
  modules=()
  while read -r how spec file module _; do
    files+=("$kit/wheels/$file")
    modules+=("${spec%%==*}:$module:$how")
    [ -f "$kit/wheels/$file" ] || missing+=("$file")
  done < <(awk '$1 == "download" || $1 == "compile" || $1 == "project"' "$LIST")
  [ ${#missing[@]} -eq 0 ] || die "the kit lacks ${missing[*]}: run scripts/gpu_kit.sh (without --no-compile)"
  if [ -f "$kit/SHA256SUMS" ]; then  # a broken copy fails here, not halfway through the suite
    (cd "$kit" && sha256sum --quiet -c SHA256SUMS) || die "the kit's files do not match $kit/SHA256SUMS"
  fi
  # Only the suite needs 3.12 (the compiled wheels); installing, and a dry run, work with any.
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    [ "$stage" = install ] || [ "$dry_run" = 1 ] || die "the kit is for Python 3.12, $PY is not"
    echo "gpu_check: warning: $PY is not Python 3.12, for which the kit is installed"
  fi
  echo "gpu_check: installing ${#files[@]} wheels from $kit into $TARGET (offline)"
  SECONDS=0
  run "$PY" -m pip install --no-index --no-deps --no-compile --upgrade --quiet \
    --disable-pip-version-check --target "$TARGET" "${TARGET_PIP[@]}" "${files[@]}"
  echo "gpu_check: install took ${SECONDS} s"
  # The checkout's own code runs (the kit's copy of it only adds the installed metadata and the
  # `ocp-graphpar` command), then the kit, then the machine's packages.
  export PYTHONPATH="$REPO:$TARGET${PYTHONPATH:+:$PYTHONPATH}" PATH="$TARGET/bin:$PATH"
  echo "gpu_check: PYTHONPATH=$PYTHONPATH"
  run "$PY" - "$TARGET" "$REPO" "${modules[@]}" <<'EOF'
import importlib, importlib.metadata as metadata, importlib.util, os, sys

target, repo = (os.path.realpath(p) for p in sys.argv[1:3])
failed = []


def where(module):
    paths = [module.__file__] if getattr(module, "__file__", None) else list(module.__path__)
    return os.path.realpath(paths[0])


def inside(path, folder):
    return path == folder or path.startswith(folder + os.sep)


print(f"python {sys.version.split()[0]} ({sys.executable})")
for name in ("torch", "numpy", "torch_geometric"):  # the machine's own builds
    try:
        module = importlib.import_module(name)
    except Exception as error:
        failed.append(f"{name}: {type(error).__name__}: {error}")
        continue
    print(f"  {name} {module.__version__} ({os.path.dirname(where(module))})")
    if inside(where(module), target):
        failed.append(f"{name} comes from the kit, which must not shadow the machine's own")
    if name == "torch":
        gpu = module.cuda.get_device_name(0) if module.cuda.is_available() else "none visible"
        print(f"    CUDA {module.version.cuda}, GPU: {gpu}")
for item in sys.argv[3:]:
    dist, name, how = item.split(":")
    home = repo if how == "project" else target
    try:  # the checkout's code is only located: the suite imports it first thing
        version = metadata.version(dist)
        if how == "project":
            path = os.path.realpath(importlib.util.find_spec(name).origin)
        else:
            path = where(importlib.import_module(name))
    except Exception as error:
        failed.append(f"{name}: {type(error).__name__}: {error}")
        continue
    print(f"  {name} {version} from {'the checkout' if how == 'project' else 'the kit'}")
    if not inside(path, home):
        failed.append(f"{name} comes from {path}, not from {home}")
if failed:
    sys.exit("gpu_check: the kit's install is not usable:\n  " + "\n  ".join(failed))
EOF
}

# The suite with $PY: nvidia-smi, a GPU torch can see (unless the options ask for the CPU), then
# `ocp-graphpar bench` within $limit seconds, its log kept in $out.
run_suite() {
  local suite=$1 status
  if [ "$dry_run" = 0 ]; then
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    fi
    if [[ " ${bench_args[*]} " != *" --device cpu "* ]]; then
      "$PY" -c 'import sys, torch
ok = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU visible: {ok}")
sys.exit(0 if ok else "torch sees no GPU: a CUDA build is needed (make setup CUDA=cu128)")'
    fi
  fi
  SECONDS=0
  set +e
  # -k: a suite that ignores SIGTERM is killed 20 s later, still inside the machine's time.
  run env PYTHONUNBUFFERED=1 timeout -k 20 "$limit" "$PY" -m ocp_graphpar.cli bench \
    --suite "$suite" --out "$out" "${bench_args[@]}" 2>&1 \
    | if [ "$dry_run" = 1 ]; then cat; else tee "$out/gpu_check.log"; fi
  status=${PIPESTATUS[0]}
  set -e
  echo "bench took ${SECONDS} s (exit status $status)"
  [ "$status" != 124 ] || echo "gpu_check: the suite ran past its ${limit} s and was stopped (GPU_CHECK_TIMEOUT)"
  [ "$status" = 0 ] || return "$status"
  # Graph parallelism on the device: P gloo ranks share it, float64, against P = 1.
  local device=(--device cuda) tiny=()
  [[ " ${bench_args[*]} " != *" --device cpu "* ]] || device=(--device cpu)
  [[ " ${bench_args[*]} " != *" --tiny "* ]] || tiny=(--tiny)
  run env PYTHONUNBUFFERED=1 "$PY" scripts/gp_device_check.py --suite "$suite" --out "$out" \
    "${device[@]}" "${tiny[@]}"
}

if [[ "$stage" == kit || "$stage" == install ]]; then
  install_kit
  if [ "$stage" = kit ]; then
    # The suite names its frames as ../shared/data/oc20_mini/...; a copy of it names the kit's.
    suite=$TARGET/gpu.yml
    if [ "$dry_run" = 0 ]; then
      sed "s#\.\./shared/data/oc20_mini/#$kit/oc20_mini/#g" "$SUITE" >"$suite"
    fi
    for frame in $(grep -oE '\.\./shared/data/oc20_mini/[A-Za-z0-9_.-]+' "$SUITE" | sort -u); do
      [ -f "$kit/oc20_mini/${frame##*/}" ] || die "the kit lacks the frame oc20_mini/${frame##*/}"
    done
    run_suite "$suite"
  fi
  exit 0
fi

if [[ "$stage" == all || "$stage" == setup ]]; then
  SECONDS=0
  run make setup CUDA="${CUDA:-cu128}"
  echo "setup took ${SECONDS} s"
fi
if [[ "$stage" == all || "$stage" == bench ]]; then
  if [[ ! -d ../shared/data/oc20_mini && -d shared/data/oc20_mini ]]; then
    run ln -s "$PWD/shared" ../shared
  fi
  run_suite "$SUITE"
fi
