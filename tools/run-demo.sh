#!/usr/bin/env bash
# `make run`: start the daemon on SmolLM2-135M-Instruct (prompt-lookup drafting) on a private socket,
# stream one request through specctl, show the speculative statistics, then stop the daemon with
# SIGTERM as a service manager would.
#
#   tools/run-demo.sh BUILD_DIR MODEL.gguf PROMPT      (PROMPT is sent as a chat message: the daemon
#                                                      applies the model's chat template)
set -euo pipefail

build=$1 model=$2 prompt=$3
dir=$(mktemp -d "${TMPDIR:-/tmp}/specd-run.XXXXXX")
sock=$dir/specd.sock
log=$dir/specd.log
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT

"$build/bin/specd" --target "$model" --socket "$sock" --log-level info 2>"$log" &
pid=$!
for _ in $(seq 1 300); do
    [ -S "$sock" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "run-demo: specd exited during start-up" >&2; exit 1; }
    sleep 0.1
done
[ -S "$sock" ] || { cat "$log" >&2; echo "run-demo: specd did not create $sock" >&2; exit 1; }

echo "== specd is serving $model on $sock; streaming one request with specctl:"
"$build/bin/specctl" --socket "$sock" generate "$prompt" --chat --stream --max-tokens 96 --temperature 0
echo "== the same request without speculation (A/B):"
"$build/bin/specctl" --socket "$sock" generate "$prompt" --chat --max-tokens 96 --temperature 0 --no-spec >/dev/null
"$build/bin/specctl" --socket "$sock" stats --prometheus | grep -E '^specd_(requests_total|tokens_(generated|drafted|accepted))' || true

kill -TERM "$pid"
wait "$pid"
pid=
echo "== specd drained and exited cleanly; its log:"
cat "$log"
