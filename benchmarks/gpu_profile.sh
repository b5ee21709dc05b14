#!/usr/bin/env bash
# Profile every flagship variant on this host's GPU (gpu:<model>) with the PyTorch runtimes,
# from source: no pip install, no Ray, no llama.cpp, no network. Writes into OUTDIR the profile
# JSON (profiler point format + metadata), the raw per-batch latencies (JSON lines) and this log,
# each point as soon as it is measured. Without CUDA (or with --dry-run) it runs the same code on
# the CPU with tiny sample counts (the test in `make test`).
#
# Before: `bash benchmarks/gpu_carry.sh` here (writes .gpu-carry/, ignored by git; it checks that the
# tracked files and the carry stay under 50 MiB of the 64 that travel).
# The lead's device run (tracked files + the carry travel). It ends within 6 minutes of its start:
# the variants most likely in the ladder first (YOLOv10-N, YOLOv4-tiny, the classifiers, the LLMs,
# then the YOLOv3-tiny candidates), no variant after 270 s, no batch size after 300 s or past its
# variant's 90 s, the point under way abandoned at 340 s (varipipe.profiler.gpu_profile --help), and
# this script kills Python at KILL_AFTER_S should it not get back to Python code by then:
#
#   run(command='bash benchmarks/gpu_profile.sh "$OUT"', carry=[".gpu-carry"], timeout_s=420)
#
# then copy $OUT/vision-caption-gpu-<model>.json (or, where no variant had an accuracy figure yet,
# its .metadata.json; python -m varipipe.profiler.gpu_score scores those points later) into the
# repository.
#
#   bash benchmarks/gpu_profile.sh OUTDIR [--dry-run] [--budget-s S] [--batches 1,2,4] [--variants a,b]
set -euo pipefail
STARTED=$(date +%s.%N)  # the run's clock starts here: Python's start-up counts in its budget
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: bash benchmarks/gpu_profile.sh OUTDIR [--dry-run] [options of varipipe.profiler.gpu_profile]}
shift
CARRY=${GPU_CARRY:-$REPO/.gpu-carry}
PYTHON=${PYTHON:-python3}
# The last resort after the profiler's own hard stop (340 s from STARTED): 6 minutes of device time.
KILL_AFTER_S=${GPU_PROFILE_KILL_AFTER_S:-355}
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
  # Every point is on disk as soon as it is measured: a kill loses only the point under way.
  LIMIT=()
  command -v timeout >/dev/null && LIMIT=(timeout --kill-after=5 "$KILL_AFTER_S") || echo "no timeout(1): the profiler's own hard stop only"
  "${LIMIT[@]}" "$PYTHON" -P -m varipipe.profiler.gpu_profile "$OUT" --carry "$CARRY" --started-at "$STARTED" "$@"
} 2>&1 | tee "$OUT/gpu_profile.log"
