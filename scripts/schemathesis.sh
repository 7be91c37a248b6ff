#!/usr/bin/env bash
# Schemathesis against examples/fastapi_app.py, with and without ResilientMiddleware (every
# feature on), and the checks that fail only with the middleware. Target: none.
#
#   scripts/schemathesis.sh              # 100 examples per operation (about a minute)
#   EXAMPLES=1000 scripts/schemathesis.sh
#
# Runs in a venv of its own, .venv-schemathesis (made on the first run: the package, FastAPI,
# uvicorn, schemathesis), so schemathesis' dependencies (rich...) never change the dev venv;
# PY=path/to/python uses another interpreter. Serves each variant under uvicorn on 127.0.0.1
# on a free port and stops it afterwards. Exit status 1 when a check fails only with the
# middleware. Reports land in ${OUT:-.schemathesis}/.
set -euo pipefail
cd "$(dirname "$0")/.."
EXAMPLES=${EXAMPLES:-100}
OUT=${OUT:-.schemathesis}
mkdir -p "$OUT"
if [ -z "${PY:-}" ]; then
    PY=.venv-schemathesis/bin/python
    if [ ! -x "$PY" ]; then
        python3 -m venv .venv-schemathesis
        "$PY" -m pip install -q -e . fastapi uvicorn schemathesis
    fi
fi

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_variant() {  # $1 = on | off
    local port pid
    port=$(free_port)
    RESILIENT_MIDDLEWARE=$1 "$PY" -m uvicorn scripts.schemathesis_app:app --host 127.0.0.1 --port "$port" \
        --log-level warning >"$OUT/uvicorn-$1.log" 2>&1 &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true' RETURN
    for _ in $(seq 100); do
        "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/openapi.json', timeout=1)" \
            2>/dev/null && break
        sleep 0.1
    done
    "$PY" -m schemathesis.cli run "http://127.0.0.1:$port/openapi.json" --checks all --max-examples "$EXAMPLES" \
        --seed 18 --workers 1 --report junit --report-junit-path "$OUT/junit-$1.xml" \
        >"$OUT/schemathesis-$1.txt" 2>&1 || true
}

run_variant off
run_variant on
"$PY" scripts/schemathesis_diff.py "$OUT/junit-off.xml" "$OUT/junit-on.xml"
