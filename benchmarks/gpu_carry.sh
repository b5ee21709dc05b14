#!/usr/bin/env bash
# Make .gpu-carry/: what benchmarks/gpu_profile.sh needs on a GPU host that runs from source
# (the ladder detectors' weights -- YOLOv10-N as shipped, YOLOv4-tiny as float16 -- YOLOv3-tiny's
# cfg, efficientnet_lite_pytorch's source, the profiler's inputs with their upstream outputs, the
# LLM prompt recordings, a manifest: varipipe.profiler.gpu_inputs). Runs here, on the CPU, with
# every package installed (about a minute). Checks that the repository's tracked files plus the
# carry fit in the 64 MiB that travel with a device run, with room to grow: at most 50 MiB.
#
#   bash benchmarks/gpu_carry.sh [CARRY_DIR]        (default .gpu-carry, ignored by git)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
CARRY=${1:-.gpu-carry}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
LIMIT=$((64 * 1024 * 1024))  # bytes that travel with one device run (tracked files + carry)
TARGET=$((50 * 1024 * 1024))  # what this script allows: 14 MiB left for the repository to grow

rm -rf "$CARRY"
"$PYTHON" -m varipipe.profiler.gpu_inputs "$CARRY"
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -sb "$CARRY" | cut -f1)
total=$((tracked + carried))
awk -v t="$tracked" -v c="$carried" -v l="$LIMIT" -v d="$CARRY" 'BEGIN {
  printf "tracked files %.1f MiB + %s %.1f MiB = %.1f MiB of %d MiB\n", t/1048576, d, c/1048576, (t+c)/1048576, l/1048576 }'
if [ "$total" -gt "$TARGET" ]; then
  echo "error: over $((TARGET / 1048576)) MiB (the device run takes $((LIMIT / 1048576)) MiB; keep room to grow)" >&2
  exit 1
fi
