#!/usr/bin/env bash
# Run experiment files as one queue on one machine (a GPU or a CPU): N processes per file share its runs
# (each run's lock keeps a second process off it), all stopped at a deadline (SIGTERM: the runner releases
# its lock, and the next invocation continues the run from its last checkpoint), then every file's tables
# are rewritten from the runs done, and the small files of the results (done markers, per-case evaluations,
# metrics, timing, tables; no checkpoints, predictions or caches) are copied to DEST to be committed.
#
#   experiments/queue.sh [-p PROCS] [-t SECONDS] [-c DEST] [-x H2ASEG] CONFIG=OUT [CONFIG=OUT ...]
#
#   -p  processes per experiment file (default 1; on an H200 each run uses a few % of the card)
#   -t  deadline in seconds for the whole queue (default: none)
#   -c  copy the small result files of every OUT here, keeping the paths (default: no copy)
#   -x  the h2aseg command (default: h2aseg; e.g. "python3 -m h2aseg" with PYTHONPATH set)
#
# Example (issue 26's study on one GPU; the cohort first):
#   h2aseg synth --out synth-cohort-240 --cases 240 --layout autopet --seed 26 --no-progress
#   experiments/queue.sh -p 3 -t 540 -c "$OUT" \
#     experiments/study-a-paper-synth.yaml=results/study-a-paper \
#     experiments/study-a-released-synth.yaml=results/study-a-released
set -uo pipefail

procs=1
deadline=""
dest=""
h2aseg="h2aseg"
while getopts "p:t:c:x:" opt; do
  case "$opt" in
    p) procs="$OPTARG" ;;
    t) deadline="$OPTARG" ;;
    c) dest="$OPTARG" ;;
    x) h2aseg="$OPTARG" ;;
    *) echo "usage: $0 [-p PROCS] [-t SECONDS] [-c DEST] [-x H2ASEG] CONFIG=OUT ..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ "$#" -eq 0 ]; then
  echo "usage: $0 [-p PROCS] [-t SECONDS] [-c DEST] [-x H2ASEG] CONFIG=OUT ..." >&2
  exit 2
fi
for pair in "$@"; do
  config="${pair%%=*}"
  if [ "$config" = "$pair" ] || [ ! -f "$config" ]; then
    echo "error: $pair: expected CONFIG=OUT with an existing experiment file" >&2
    exit 2
  fi
done

pids=()
for pair in "$@"; do
  config="${pair%%=*}"
  out="${pair#*=}"
  mkdir -p "$out"
  for i in $(seq 1 "$procs"); do
    # the first process of a file makes its split; the others start a little later and share it
    [ "$i" -gt 1 ] && sleep 5
    $h2aseg experiment --config "$config" --out "$out" --no-progress > "$out/queue-$i.log" 2>&1 &
    pids+=("$!")
  done
done

if [ -n "$deadline" ]; then
  # the sleep is waited for, so the watchdog's own kill ends it too (no orphan sleep holding our output)
  ( trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$deadline" & sleeper=$!
    wait "$sleeper" && kill -TERM "${pids[@]}" 2>/dev/null ) > /dev/null 2>&1 &
  watchdog=$!
fi
wait "${pids[@]}"
[ -n "$deadline" ] && kill "$watchdog" 2>/dev/null

for pair in "$@"; do
  config="${pair%%=*}"
  out="${pair#*=}"
  if [ -f "$out/split.json" ]; then
    $h2aseg experiment --config "$config" --out "$out" --tables-only --no-progress > "$out/tables.log" 2>&1 \
      || echo "note: tables of $out not rewritten (see $out/tables.log)" >&2
  fi
  grep -h "(done)\|(failed" "$out"/queue-*.log 2>/dev/null | sed "s#^#$out: #"
done

if [ -n "$dest" ]; then
  for pair in "$@"; do
    out="${pair#*=}"
    (
      cd "$out/.." || exit 0
      base="$(basename "$out")"
      find "$base" \( -name cache -o -name checkpoints -o -name 'predictions*' -o -name tb -o -name nnunet \
        -o -name nnUNet_results -o -name nnunet_pred \) -prune -o -type f \
        \( -name '*.json' -o -name '*.csv' -o -name '*.md' -o -name '*.tex' -o -name '*.yaml' -o -name '*.log' \
        -o -name 'error.txt' \) ! -name tamw_weights_channels.csv -size -2M -print
    ) | while read -r f; do
      mkdir -p "$dest/$(dirname "$f")"
      cp "$(dirname "$out")/$f" "$dest/$f"
    done
  done
fi
