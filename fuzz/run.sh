#!/bin/sh
# Short coverage-guided fuzzing runs: fuzz/run.sh SECONDS (default 60) for the parser, then as long for the
# AWS event-stream decoder, from a random seed (exploration). With FUZZ_RUNS=N each target instead runs N
# inputs from seed 1 (FUZZ_RUNS_EVENTSTREAM for the second target, default 5N): the same inputs every time for
# a given commit, so that CI's verdict is reproducible; new finds come from the timed runs.
# Builds the seed corpus from the bundled fixtures (src/mendstream/fixtures/*.sse) into a temporary directory (nothing is written to the
# checkout), fuzzes for SECONDS, and exits non-zero with the crashing input saved if the contract breaks.
# Skips with a message when atheris (the `fuzz` extra) is not installed.
set -eu
seconds="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
if ! "$python" -c "import atheris" 2>/dev/null; then
    echo "fuzz/run.sh: atheris is not installed (pip install 'mendstream[fuzz]'); skipping the fuzz run"
    exit 0
fi
if [ -n "${FUZZ_RUNS:-}" ]; then
    budget_parser="-seed=1 -runs=$FUZZ_RUNS"
    budget_eventstream="-seed=1 -runs=${FUZZ_RUNS_EVENTSTREAM:-$((FUZZ_RUNS * 5))}"
else
    budget_parser="-max_total_time=$seconds"
    budget_eventstream="-max_total_time=$seconds"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" "$here/fuzz_parser.py" --write-seeds "$work/corpus"
# Crash reproducers go to the current directory (crash-*), so CI can keep them as artifacts.
# shellcheck disable=SC2086  # the budget is two options
"$python" "$here/fuzz_parser.py" $budget_parser -timeout=30 -rss_limit_mb=2048 \
    -max_len=16384 -print_final_stats=1 "$work/corpus"
# The AWS event-stream decoder and the Bedrock parser (fuzz/fuzz_eventstream.py), for the same time.
# shellcheck disable=SC2086
"$python" "$here/fuzz_eventstream.py" $budget_eventstream -timeout=30 -rss_limit_mb=2048 \
    -max_len=16384 -print_final_stats=1
