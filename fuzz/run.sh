#!/bin/sh
# Short coverage-guided fuzzing runs for CI: fuzz/run.sh SECONDS (default 60) for the parser, then as long
# for the AWS event-stream decoder.
# Builds the seed corpus from fixtures/*.sse into a temporary directory (nothing is written to the
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
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" "$here/fuzz_parser.py" --write-seeds "$work/corpus"
# Crash reproducers go to the current directory (crash-*), so CI can keep them as artifacts.
"$python" "$here/fuzz_parser.py" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
    -max_len=16384 -print_final_stats=1 "$work/corpus"
# The AWS event-stream decoder and the Bedrock parser (fuzz/fuzz_eventstream.py), for the same time.
"$python" "$here/fuzz_eventstream.py" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
    -max_len=16384 -print_final_stats=1
