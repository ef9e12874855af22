#!/usr/bin/env bash
# Captures the README's dashboard picture (docs/images/dashboard.png): the churn
# dashboard that `segments serve` answers on GET /, fed by a real `segments demo` run
# (generator -> Kafka -> worker -> serve -> Redis, the pipeline of `make demo`),
# rendered by headless Chromium (Debian's package, `make system-deps`).
#
#   scripts/screenshot-dashboard.sh [OUT.png]
#
# It starts the local Kafka and Redis like `make demo`, runs the demo until the page has
# SAMPLES size samples (serve samples segment sizes once a minute; default 4, so about
# four minutes), takes the picture, then interrupts the demo, which deletes its topics,
# Redis keys and state as on Ctrl-C. RATE (events per second, default 40) slows the
# demo so entries and exits spread over those minutes. SEGMENTS_WEB_PORT (default 6066)
# is the dashboard's port; the demo's worker uses the next one. With SEGMENTS_API_TOKEN
# set, the page is opened as /#token=... and the polling sends the bearer token.
set -euo pipefail
set -m # job control: the demo runs in its own process group and keeps SIGINT (Ctrl-C)
cd "$(dirname "$0")/.."
OUT=${1:-docs/images/dashboard.png}
SAMPLES=${SAMPLES:-4}
RATE=${RATE:-40}
PORT=${SEGMENTS_WEB_PORT:-6066}
export SEGMENTS_WEB_PORT=$PORT
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $CHROMIUM ]]; then
    echo "screenshot-dashboard: chromium is missing (make system-deps installs it)" >&2
    exit 1
fi
make --no-print-directory setup services-up >/dev/null

work=$(mktemp -d)
.venv/bin/segments demo --until-interrupted --rate "$RATE" >"$work/demo.log" 2>&1 &
demo=$!
stop_demo() {
    if kill -0 "$demo" 2>/dev/null; then
        kill -INT "$demo" # the demo's Ctrl-C: stops worker and serve, deletes what it made
        wait "$demo" || true
    fi
    rm -rf "$work"
}
trap stop_demo EXIT

# Waits (deadline: two minutes per sample plus three for the start) until the dashboard's
# own data source, GET /segments/history, has SAMPLES size samples.
DEMO_PID=$demo PORT=$PORT SAMPLES=$SAMPLES .venv/bin/python - <<'EOF'
import json, os, sys, time, urllib.request

url = f"http://127.0.0.1:{os.environ['PORT']}/segments/history"
token = os.environ.get("SEGMENTS_API_TOKEN")
headers = {"Authorization": f"Bearer {token}"} if token else {}
wanted = int(os.environ["SAMPLES"])
deadline = time.monotonic() + 180 + 120 * wanted
samples = 0
while samples < wanted:
    try:
        os.kill(int(os.environ["DEMO_PID"]), 0)
    except ProcessLookupError:
        sys.exit("screenshot-dashboard: the demo stopped early")
    if time.monotonic() > deadline:
        sys.exit(f"screenshot-dashboard: only {samples} of {wanted} size samples in time")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
            samples = len(json.load(r)["sizes"])
    except OSError:
        pass  # serve is not up yet
    time.sleep(1)  # polling interval of the condition above
EOF

mkdir -p "$(dirname "$OUT")"
url="http://127.0.0.1:$PORT/"
[[ -n ${SEGMENTS_API_TOKEN:-} ]] && url+="#token=$SEGMENTS_API_TOKEN"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$work/profile" --virtual-time-budget=5000 --window-size=900,1200 \
    --screenshot="$OUT" "$url" >/dev/null 2>&1
if [[ $(head -c 4 "$OUT" | od -An -tx1 | tr -d ' ') != 89504e47 ]]; then
    echo "screenshot-dashboard: $OUT is not a PNG" >&2
    exit 1
fi
echo "screenshot-dashboard: wrote $OUT ($(stat -c %s "$OUT") bytes)"
