#!/usr/bin/env bash
# Build the Docker image and run the benchmark sweep in it on every GPU; without Docker or
# without a GPU, say so and run the sweep with the local Python (or stop: --no-fallback).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=build_and_run.sh
# Exit status when Docker or a GPU is missing and --no-fallback (or a local run is impossible).
UNAVAILABLE=3

usage() {
  cat <<EOF
Usage: ./$PROG [--output-dir DIR] [--image NAME] [--cache-dir DIR] [--no-fallback | --local] [-- SWEEP ARGS...]

Builds the image from the Dockerfile beside this script and runs the benchmark sweep in it
on every GPU (docker run --gpus all). DIR receives benchmark_results.csv, benchmark.json,
summary.md and the plots, owned by you.

Without a working Docker engine (docker info fails) or without an NVIDIA GPU (nvidia-smi
missing or failing), it says so and runs the sweep with the local Python instead (on the
CPU when there is no GPU), unless --no-fallback is given.

Options:
  --output-dir DIR   where the results go (default: ./test_results)
  --image NAME       tag of the image to build and run (default: densenet-opt:latest)
  --cache-dir DIR    host folder for cached weights and built artifacts, mounted into the
                     container (default: \${XDG_CACHE_HOME:-~/.cache}/densenet_opt)
  --no-fallback      exit with status $UNAVAILABLE instead of running locally
  --local            skip Docker and run the sweep with the local Python
  -h, --help         show this help

Arguments after -- go to the sweep, e.g.: ./$PROG -- --variants baseline,pruned --batch-sizes 1,32
The local Python is \$PYTHON if set, else python, else python3; it needs densenet-opt
installed (pip install -e '.[cpu]' or '.[gpu]' in $SCRIPT_DIR).
EOF
}

fail_usage() {
  echo "$PROG: $1 (see ./$PROG --help)" >&2
  exit 2
}

output_dir=./test_results
image=densenet-opt:latest
cache_dir=${XDG_CACHE_HOME:-$HOME/.cache}/densenet_opt
fallback=1
local_only=0
sweep_args=()

while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --output-dir | --image | --cache-dir)
      [[ $# -ge 2 && -n $2 ]] || fail_usage "$1 needs a value"
      case $1 in
        --output-dir) output_dir=$2 ;;
        --image) image=$2 ;;
        --cache-dir) cache_dir=$2 ;;
      esac
      shift 2 ;;
    --output-dir=* | --image=* | --cache-dir=*)
      value=${1#*=}
      [[ -n $value ]] || fail_usage "${1%%=*} needs a value"
      case $1 in
        --output-dir=*) output_dir=$value ;;
        --image=*) image=$value ;;
        --cache-dir=*) cache_dir=$value ;;
      esac
      shift ;;
    --no-fallback) fallback=0; shift ;;
    --local) local_only=1; shift ;;
    --) shift; sweep_args=("$@"); break ;;
    *) fail_usage "unknown argument '$1'; sweep arguments go after --" ;;
  esac
done
[[ $fallback == 1 || $local_only == 0 ]] || fail_usage "--local and --no-fallback contradict each other"
for arg in ${sweep_args[@]+"${sweep_args[@]}"}; do
  # Inside the container only /results is the caller's folder.
  [[ $arg != --output-dir && $arg != --output-dir=* ]] || fail_usage "give --output-dir before --, to $PROG itself"
done

# Created here, as the caller: a bind mount Docker has to create itself would be root's.
mkdir -p "$output_dir" "$cache_dir"
output_dir=$(cd "$output_dir" && pwd)
cache_dir=$(cd "$cache_dir" && pwd)

run_local() {
  local python=${PYTHON:-}
  if [[ -z $python ]]; then
    python=$(command -v python || command -v python3 || true)
  fi
  if [[ -z $python ]] || ! "$python" -c "import densenet_opt" >/dev/null 2>&1; then
    echo "$PROG: no local Python with densenet-opt installed: run pip install -e '.[cpu]' in $SCRIPT_DIR, or set PYTHON" >&2
    exit $UNAVAILABLE
  fi
  echo "$PROG: running the sweep with $python into $output_dir" >&2
  cd "$SCRIPT_DIR"
  exec "$python" -m densenet_opt sweep-gpus --output-dir "$output_dir" ${sweep_args[@]+"${sweep_args[@]}"}
}

fall_back() {
  if [[ $fallback == 0 ]]; then
    echo "$PROG: $1; stopping (--no-fallback)" >&2
    exit $UNAVAILABLE
  fi
  echo "$PROG: $1; running the sweep locally instead" >&2
  run_local
}

if [[ $local_only == 1 ]]; then
  run_local
elif ! command -v docker >/dev/null 2>&1; then
  fall_back "docker is not installed"
elif ! docker info >/dev/null 2>&1; then
  fall_back "the Docker engine is not reachable (docker info failed: is the daemon running, may you use it?)"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
  fall_back "nvidia-smi is not installed, so no NVIDIA GPU driver is visible"
elif ! nvidia-smi -L >/dev/null 2>&1; then
  fall_back "nvidia-smi failed, so no usable NVIDIA GPU is visible"
fi

echo "$PROG: building $image" >&2
docker build --tag "$image" "$SCRIPT_DIR"

echo "$PROG: running the sweep in $image on every GPU into $output_dir" >&2
status=0
# The host's name, not the container's random one: every row names the machine that measured
# it (the machine column), and a rerun into the same folder replaces that machine's rows.
# --ipc=host: the data loader's workers hand decoded images over in shared memory, and
# Docker's default /dev/shm (64 MB) is smaller than a few batches of them.
docker run --rm --gpus all --hostname "$HOSTNAME" --ipc=host \
  --user "$(id -u):$(id -g)" \
  --volume "$output_dir:/results" \
  --volume "$cache_dir:/cache" \
  "$image" sweep-gpus --device cuda --output-dir /results ${sweep_args[@]+"${sweep_args[@]}"} || status=$?
if [[ $status == 125 ]]; then
  # 125 is Docker's own failure to start the container, most often --gpus without the
  # NVIDIA Container Toolkit; a sweep that ran and failed exits otherwise.
  fall_back "docker could not start the container with the GPU (is the NVIDIA Container Toolkit installed?)"
fi
if [[ $status == 0 ]]; then
  echo "$PROG: results in $output_dir" >&2
fi
exit $status
