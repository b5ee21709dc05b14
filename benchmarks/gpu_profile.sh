#!/usr/bin/env bash
# Profile every flagship variant on this host's GPU (gpu:<model>) with the PyTorch runtimes,
# from source: no pip install, no Ray, no llama.cpp, no network. Writes into OUTDIR the profile
# JSON (profiler point format + metadata), the raw per-batch latencies (JSON lines) and this log,
# each point as soon as it is measured. Without CUDA (or with --dry-run) it runs the same code on
# the CPU with tiny sample counts (the test in `make test`).
#
# Before: `bash benchmarks/gpu_carry.sh` here (writes .gpu-carry/, ~40 MiB, ignored by git).
# The lead's device run (tracked files + the carry travel; designed for <= 6 minutes):
#
#   run(command='bash benchmarks/gpu_profile.sh "$OUT"', carry=[".gpu-carry"], timeout_s=540)
#
# then copy $OUT/vision-caption-gpu-<model>.json into the repository.
#
#   bash benchmarks/gpu_profile.sh OUTDIR [--dry-run] [--budget-s S] [--batches 1,2,4] [--variants a,b]
set -euo pipefail
STARTED=$(date +%s.%N)  # the run's clock starts here: Python's start-up counts in its budget
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: bash benchmarks/gpu_profile.sh OUTDIR [--dry-run] [options of varipipe.profiler.gpu_profile]}
shift
CARRY=${GPU_CARRY:-$REPO/.gpu-carry}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

# The installed layout from source: pyproject.toml's package-dir maps varipipe.pipelines to
# pipelines/ and so on; a folder of symlinks lays the tree out that way for PYTHONPATH.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
"$PYTHON" - "$REPO" "$SRC" <<'PY'
import sys, tomllib
from pathlib import Path

repo, src = Path(sys.argv[1]), Path(sys.argv[2])
dirs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
(src / "varipipe").mkdir()
for entry in (repo / dirs["varipipe"]).iterdir():
    (src / "varipipe" / entry.name).symlink_to(entry)
for package, folder in dirs.items():
    if package != "varipipe":
        (src / package.replace(".", "/")).symlink_to(repo / folder)
PY
export PYTHONPATH="$SRC:$CARRY/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

{
  echo "gpu_profile.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $("$PYTHON" --version 2>&1)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  # -P: the working directory (the repository, whose varipipe/ lacks the mapped packages) stays off sys.path
  "$PYTHON" -P -m varipipe.profiler.gpu_profile "$OUT" --carry "$CARRY" --started-at "$STARTED" "$@"
} 2>&1 | tee "$OUT/gpu_profile.log"
