# Sourced by the benchmark scripts: --help, required settings, the result folder, progress lines.
# Settings are environment variables. `bench_init QUESTION "$@"` handles --help, checks DATA, TOKENIZER and OUT,
# makes them absolute and moves to the repository root (the scripts run `python -m trainer|search|spaces`); the
# script then checks its own settings and calls `bench_start`, which creates RESULT=$OUT/QUESTION_<gpu>_<date>/,
# gpu being the first GPU's model from nvidia-smi (h100, a100, ...) or cpu, date today's or RESULT_DATE (a folder of
# an earlier day on the same GPU model, to go on with it). Bad settings leave nothing behind.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
SCRIPT=$(basename "$0")

# The calling script's header: its comment lines after the shebang, without the leading '# '.
bench_usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  echo
  echo "Every benchmark script also takes RESULT_DATE=YYYY-MM-DD: go on with the results folder of that day (same"
  echo "GPU model), keeping what it finished, instead of starting today's."
}

# One line naming the problem and the fix, then exit 2.
bench_fail() {
  echo "$SCRIPT: $*" >&2
  exit 2
}

# The device's short name for folder names: "NVIDIA H100 80GB HBM3" -> h100; no GPU (or SMOKE=1) -> cpu.
gpu_name() {
  local name
  if [ "${SMOKE:-0}" = 1 ] || ! command -v nvidia-smi > /dev/null; then echo cpu; return; fi
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -n 1)
  if [ -z "$name" ]; then echo cpu; return; fi
  name=$(echo "$name" | tr '[:upper:]' '[:lower:]' | sed -e 's/^nvidia //' -e 's/[^a-z0-9]\{1,\}/-/g' -e 's/^-//' -e 's/-$//')
  if [[ $name =~ ^([a-z]+[0-9]+[a-z]?)- ]]; then name=${BASH_REMATCH[1]}; fi
  echo "$name"
}

# GPUs visible to this process (0 without nvidia-smi or with SMOKE=1).
gpu_count() {
  if [ "${SMOKE:-0}" = 1 ] || ! command -v nvidia-smi > /dev/null; then echo 0; return; fi
  nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | grep -c .
}

bench_init() {
  local question=$1; shift
  case "${1:-}" in
    -h|--help) bench_usage; exit 0 ;;
    "") ;;
    *) bench_fail "unknown argument '$1': settings are environment variables, e.g. DATA=... TOKENIZER=... OUT=... bash benchmarks/$SCRIPT (--help lists them)" ;;
  esac
  local var
  for var in DATA TOKENIZER OUT; do
    [ -n "${!var:-}" ] || bench_fail "$var is not set: run DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> bash benchmarks/$SCRIPT (--help lists the settings)"
  done
  [ -d "$DATA" ] || bench_fail "DATA=$DATA is not a folder: name the folder holding fineweb_train_*.bin and fineweb_val_*.bin"
  [ -f "$TOKENIZER" ] || bench_fail "TOKENIZER=$TOKENIZER is not a file: name the SentencePiece .model the shards were made with"
  case "${SMOKE:-0}" in 0|1) ;; *) bench_fail "SMOKE=$SMOKE: use SMOKE=1 for the tiny CPU run, or leave it unset" ;; esac
  DATA=$(cd "$DATA" && pwd)
  TOKENIZER=$(cd "$(dirname "$TOKENIZER")" && pwd)/$(basename "$TOKENIZER")
  case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
  BENCH_QUESTION=$question
  cd "$REPO_DIR" || exit 2
}

# After the script's own checks: the result folder, and the clock for progress lines.
bench_start() {
  RESULT=$OUT/${BENCH_QUESTION}_$(gpu_name)_$(date +%F)
  if [ -n "${RESULT_DATE:-}" ]; then
    [[ $RESULT_DATE =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] || bench_fail "RESULT_DATE=$RESULT_DATE is not a date: use the YYYY-MM-DD of the results folder to go on with"
    RESULT=$OUT/${BENCH_QUESTION}_$(gpu_name)_$RESULT_DATE
    [ -d "$RESULT" ] || bench_fail "RESULT_DATE=$RESULT_DATE: $RESULT is not a folder: name the date of a ${BENCH_QUESTION}_$(gpu_name)_<date> folder in OUT (same GPU model), or leave RESULT_DATE out"
  fi
  mkdir -p "$RESULT" || bench_fail "cannot create $RESULT: set OUT to a folder you can write"
  BENCH_START=$SECONDS
  export PYTHONUNBUFFERED=1
  echo "$SCRIPT: results in $RESULT"
}

# A non-negative integer setting, or exit 2 naming it.
require_int() {
  local name=$1
  [[ ${!name} =~ ^[0-9]+$ ]] || bench_fail "$name=${!name} is not a whole number of ${2:-units}"
}

# A positive number setting (seconds), or exit 2 naming it.
require_seconds() {
  local name=$1
  [[ ${!name} =~ ^[0-9]+([.][0-9]+)?$ ]] && [[ ! ${!name} =~ ^0+([.]0+)?$ ]] || bench_fail "$name=${!name} is not a positive number of seconds"
}

# "--set A --set B ..." for the space-separated overrides in $1, into the array named by $2.
set_args() {
  local -n into=$2
  local item
  for item in $1; do into+=(--set "$item"); done
}

# Train one run: `bench_train LABEL RUN_DIR LOG [trainer train arguments...]` runs `python -m trainer train` on
# DATA and TOKENIZER into RUN_DIR, its output to LOG. Done: prints the last line of its train.log matching $SHOW
# (default "training done") after LABEL, so runs finishing side by side are told apart. Failed: names the log, sets
# failed=1 and returns 1.
bench_train() {
  local label=$1 run_dir=$2 log=$3
  shift 3
  if python -m trainer train --data "$DATA" --tokenizer "$TOKENIZER" --out "$run_dir" "$@" > "$log" 2>&1; then
    progress "$label: $(grep -E "${SHOW:-training done}" "$run_dir/train.log" | tail -n 1)"
    return 0
  fi
  failed=1
  echo "$SCRIPT: $label failed: $(tail -n 1 "$log") (log: $log)" >&2
  return 1
}

# A progress line with the time since the script started.
progress() {
  printf '[%s +%ds] %s\n' "$SCRIPT" $((SECONDS - BENCH_START)) "$*"
}

# Run the search the array `search` describes (python -m search run), or resume search $1 in storage $2 when its
# search.json exists (the same command again goes on with it; a finished search just reports), with any more
# arguments given to resume. Logs to $RESULT/search.log; on an error names the log and sets failed=1.
run_or_resume_search() {
  local name=$1 storage=$2 command
  shift 2
  if [ -f "$storage/$name/search.json" ]; then
    progress "search $name exists: resuming it"
    command=(resume "$name" --storage "$storage" "$@")
  else
    progress "search $name: ${search[*]}"
    command=(run "${search[@]}")
  fi
  progress "log: $RESULT/search.log; progress: python -m search status $name --storage $storage --watch 30"
  if ! python -m search "${command[@]}" >> "$RESULT/search.log" 2>&1; then
    failed=1
    echo "$SCRIPT: the search stopped with an error: $(tail -n 1 "$RESULT/search.log") (log: $RESULT/search.log)" >&2
  fi
}

# The report of search $1 in storage $2 (md and frontier.png) copied into $RESULT; on an error names the log, sets
# failed=1 and returns 1.
report_search() {
  if python -m search report "$1" --storage "$2" --format md --plot frontier.png > "$RESULT/report.log" 2>&1; then
    cp "$2/$1/report/"* "$RESULT/" 2> /dev/null
    return 0
  fi
  failed=1
  echo "$SCRIPT: no report: $(tail -n 1 "$RESULT/report.log") (log: $RESULT/report.log)" >&2
  return 1
}
