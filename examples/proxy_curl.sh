#!/usr/bin/env bash
# The repairing proxy in front of any client, here curl (the TypeScript SDK, Claude Code or any agent that reads
# ANTHROPIC_BASE_URL works the same way: `ANTHROPIC_BASE_URL=http://127.0.0.1:$PROXY_PORT node app.js`).
#
# Offline: `mendstream serve` answers from the bundled fixtures (playing the API), and `mendstream proxy`
# forwards to it. The same broken stream (raw control characters inside the event JSON) is fetched directly
# and through the proxy, and both are checked with a strict JSON parser, as an SDK would read them.
# Needs the proxy extra (uvicorn, httpx2) and curl.
#
#     bash examples/proxy_curl.sh
set -euo pipefail
MENDSTREAM=${MENDSTREAM:-mendstream}
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_for() {   # wait_for URL: until the server answers (at most 30 s)
    for _ in $(seq 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "no answer from $1" >&2; return 1
}

# The "API": the bundled fixtures on a free port (serve prints its base_url on stdout).
$MENDSTREAM serve --port 0 --quiet >"$work/serve.out" 2>"$work/serve.err" &
pids+=($!)
for _ in $(seq 300); do grep -q base_url "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
api=$(sed -n 's/^base_url: //p' "$work/serve.out")
[ -n "$api" ] || { cat "$work/serve.err" >&2; exit 1; }

# The proxy, in front of it.
proxy_port=$($PYTHON -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$MENDSTREAM proxy --upstream "$api" --port "$proxy_port" --cache planner >"$work/proxy.log" 2>&1 &
pids+=($!)
proxy="http://127.0.0.1:$proxy_port"
wait_for "$proxy/mendstream/stats"

request='{"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
          "messages": [{"role": "user", "content": "Show me the table."}]}'
fetch() {   # fetch BASE_URL: one streamed Messages request, the body on stdout
    curl -sN "$1/v1/messages" -H "x-api-key: test" -H "anthropic-version: 2023-06-01" \
        -H "content-type: application/json" -H "x-mendstream-fixture: fault_control_chars_in_event_json" \
        -d "$request"
}
strict_check='
import json, sys
for line in sys.stdin.read().splitlines():
    if line.startswith("data:"):
        json.loads(line[5:])           # strict: a raw control character inside a string is an error
print("every event is valid JSON")
'
echo "== directly from the API:"
fetch "$api" | $PYTHON -c "$strict_check" 2>&1 | tail -n 1 || true
echo "== through the proxy:"
fetch "$proxy" | tee "$work/repaired.sse" | $PYTHON -c "$strict_check"
echo "== the repaired text deltas:"
grep -o '"text_delta","text":"[^"]*"' "$work/repaired.sse" || grep -o '"text": *"[^"]*"' "$work/repaired.sse"
echo "== proxy stats:"
curl -s "$proxy/mendstream/stats"; echo
