#!/usr/bin/env bash
# Coverage-guided fuzzing of every reader with atheris (libFuzzer), docs/security.md "Fuzzing".
#
#   scripts/fuzz.sh [--smoke] [--runs N] [--time S] [--jobs J] [TARGET ...]
#
# Default: the long campaign, 1,000,000 executions per target (all targets when none is
# named; with --time, at most S seconds per target), J targets at a time, niced, with
# the limits: 5 s of CPU per input (tests/fuzz/run.py; libFuzzer's wall-clock -timeout is
# kept at 60 s for a loop that never returns: on a shared machine a niced process waits
# for a core most of the time), 2 GiB RSS, 2 GiB per allocation (tests/fuzz/run.py caps
# the address space, see there).
# Seeds: tests/fuzz/corpus/<target> and the real files of ../shared/data; new inputs go to
# .cache/fuzz/<target>/corpus (never into the repository), crashes to
# .cache/fuzz/<target>/crash-*. Each target's log ends with libFuzzer's final stats
# (executions, exec/s, coverage); scripts/fuzz_report.py turns the logs into the table of
# docs/security.md.
#
# --smoke: what CI runs: a fixed seed, a few thousand executions per target, a fresh
# corpus, a few minutes in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
RUNS=1000000
TIME=0
JOBS=1
SMOKE=0
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; RUNS=3000 ;;
    --runs) RUNS="$2"; shift ;;
    --time) TIME="$2"; shift ;;
    --jobs) JOBS="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) TARGETS+=("$1") ;;
  esac
  shift
done
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <("$PYTHON" -c "from tests.fuzz.targets import TARGETS; print('\n'.join(TARGETS))")
fi
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
SHARED=${SHARED:-../shared/data}

run_target() {
  local target=$1 work seeds=()
  work=.cache/fuzz/$target
  if [ "$SMOKE" = 1 ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/provenance-fuzz-smoke.XXXXXX")
  fi
  mkdir -p "$work/corpus"
  seeds=("tests/fuzz/corpus/$target")
  if [ "$SMOKE" = 0 ] && [ -d "$SHARED" ]; then
    mapfile -t shared < <("$PYTHON" -c "from tests.fuzz.targets import TARGETS; print('\n'.join(TARGETS['$target'].seeds))")
    for seed in "${shared[@]}"; do
      [ -n "$seed" ] && [ -f "$SHARED/$seed" ] && mkdir -p "$work/shared-seeds" && cp -f "$SHARED/$seed" "$work/shared-seeds/"
    done
    [ -d "$work/shared-seeds" ] && seeds+=("$work/shared-seeds")
  fi
  local start=$SECONDS status=0
  nice -n 10 "$PYTHON" -m tests.fuzz.run "$target" -runs="$RUNS" -max_total_time="$TIME" -seed=1 -timeout=60 -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 -max_len=65536 -print_final_stats=1 -artifact_prefix="$work/" \
    --cpu-limit-s=5 "$work/corpus" "${seeds[@]}" >"$work/log.txt" 2>&1 || status=$?
  local stats
  stats=$(grep -E "^#[0-9]+[[:space:]]+DONE|stat::(number_of_executed_units|average_exec_per_sec)" "$work/log.txt" | tr -s ' \t\n' ' ')
  echo "$target: exit $status, $((SECONDS - start)) s: $stats"
  if [ "$status" != 0 ]; then
    grep -E "Error|Exception|ERROR|crash-|timeout-|oom-" "$work/log.txt" | tail -5
    echo "$target: log and reproducer in $work"
  elif [ "$SMOKE" = 1 ]; then
    rm -rf "$work"
  fi
  return "$status"
}

failed=0
pids=()
for target in "${TARGETS[@]}"; do
  run_target "$target" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$JOBS" ]; then
    wait "${pids[0]}" || failed=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit $failed
