#!/usr/bin/env bash
# One call on a lent GPU machine, in the repository root: install the wheels carried in .whl/
# (experiments/device-wheels.sh), make the 240-study comparison cohort, run experiment files as one queue
# to a deadline (experiments/queue.sh), and pack the small files of every finished run into
# $OUT/results.tar.xz (split into 15 MiB parts if larger: a call brings back at most 8 files of 16 MiB,
# two folders deep, so queue.sh's copy cannot come back as it is).
#
#   experiments/device-queue.sh [-p PROCS] [-t SECONDS] CONFIG=results/NAME ...   (as experiments/queue.sh)
#
# From the development machine (device tool; the deadline leaves 3 minutes: install, cohort, tables, archive):
#   run(command="experiments/device-queue.sh -p 4 -t 400 experiments/table1-240-synth.yaml=results/table1-240",
#       carry=[".whl"], timeout_s=590)
# then, in the repository root here:
#   cat FILES_AT/results.tar.xz* | tar -xJf - -C results && h2aseg experiment --config ... --tables-only
# and commit what it added. Runs stopped at the deadline lose their progress (checkpoints do not come back);
# on a machine still warm, the same call again continues them.
#
# Environment: OUT (required), WHEELS (default .whl; none there: use what is installed), COHORT (default
# synth-cohort-240; kept when its phantom.json exists), DECOYS_COHORT (default synth-cohort-240-decoys, the
# same with --symmetric-decoys 1,3; made only when a CONFIG names it), PYTHON (default python3), H2ASEG
# (default: $PYTHON -m h2aseg, from src/).
set -euo pipefail

: "${OUT:?set OUT, the folder whose files come back}"
cd "$(dirname "$0")/.."
wheels="${WHEELS:-.whl}"
cohort="${COHORT:-synth-cohort-240}"
decoys="${DECOYS_COHORT:-synth-cohort-240-decoys}"
python="${PYTHON:-python3}"
h2aseg="${H2ASEG:-$python -m h2aseg}"

for arg in "$@"; do  # the archive holds NAME/...: it unpacks into results/
  if [[ "$arg" == *=* && "$(basename "$(dirname "${arg#*=}")")" != results ]]; then
    echo "error: $arg: OUT must be a folder results/NAME" >&2
    exit 2
  fi
done

started=$(date +%s)
if compgen -G "$wheels/*.whl" > /dev/null; then
  site=/tmp/h2aseg-site
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "note: no wheels in $wheels: using the Python packages installed"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$python" - <<'EOF'
import torch
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"torch {torch.__version__}, {name}")
EOF

make_cohort() {  # FOLDER [synth options]: the 240-study cohort; kept when its phantom.json exists
  local folder="$1" again=()
  shift
  [ -f "$folder/phantom.json" ] && return 0
  # a cohort cut off before its phantom.json: written again over itself (the same bytes), not deleted
  [ -d "$folder" ] && again=(--overwrite)
  $h2aseg synth --out "$folder" --cases 240 --layout autopet --seed 26 --no-progress --jobs "$(nproc)" \
    "$@" "${again[@]}"
}
make_cohort "$cohort"
for arg in "$@"; do  # step (e)'s cohort, when a config reads it
  if [[ "$arg" == *=* ]] && grep -q "synth-cohort-240-decoys" "${arg%%=*}"; then
    make_cohort "$decoys" --symmetric-decoys 1,3
    break
  fi
done
echo "set-up: $(( $(date +%s) - started )) s"

small="$(mktemp -d)"
experiments/queue.sh -x "$h2aseg" -c "$small" "$@" | tee "$OUT/queue.txt"
if [ -z "$(ls -A "$small")" ]; then
  echo "no finished run to bring back"
  exit 0
fi
tar -C "$small" -cJf "$OUT/results.tar.xz" .
if [ "$(stat -c %s "$OUT/results.tar.xz")" -gt $((15 * 1024 * 1024)) ]; then
  split -b 15M -a 1 "$OUT/results.tar.xz" "$OUT/results.tar.xz.part-"
  rm "$OUT/results.tar.xz"
fi
ls -l "$OUT"
echo "total: $(( $(date +%s) - started )) s"
