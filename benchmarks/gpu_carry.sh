#!/usr/bin/env bash
# Make .gpu-carry/: what benchmarks/gpu_profile.sh needs on a GPU host that runs from source
# (the detector's darknet files, efficientnet_lite_pytorch's source, the profiler's inputs with
# their upstream outputs, the LLM prompt recordings, a manifest). Runs here, on the CPU, with
# every package installed (about a minute). Checks that the repository's tracked files plus the
# carry fit in the 64 MiB that travel with a device run.
#
#   bash benchmarks/gpu_carry.sh [CARRY_DIR]        (default .gpu-carry, ignored by git)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
CARRY=${1:-.gpu-carry}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
LIMIT=$((64 * 1024 * 1024))  # bytes that travel with one device run (tracked files + carry)

rm -rf "$CARRY"
"$PYTHON" -m varipipe.profiler.gpu_inputs "$CARRY"
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carried=$(du -sb "$CARRY" | cut -f1)
total=$((tracked + carried))
awk -v t="$tracked" -v c="$carried" -v l="$LIMIT" -v d="$CARRY" 'BEGIN {
  printf "tracked files %.1f MiB + %s %.1f MiB = %.1f MiB of %d MiB\n", t/1048576, d, c/1048576, (t+c)/1048576, l/1048576 }'
if [ "$total" -gt "$LIMIT" ]; then
  echo "error: over the $((LIMIT / 1048576)) MiB that travel with a device run" >&2
  exit 1
fi
