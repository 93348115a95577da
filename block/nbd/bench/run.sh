#!/usr/bin/env bash
# NBD write benchmark: the same writer (`rgfs-nbd bench`: sequential 1 MiB
# writes + final flush, random 4 KiB writes + final flush, then 4 KiB write
# + flush latency) against one backing file written directly, through
# rgfs-nbd (Unix socket, and TCP on 127.0.0.1), and through qemu-nbd. The
# configurations alternate for ROUNDS rounds, since a shared disk drifts.
#
#   block/nbd/bench/run.sh [DIR] [MIB] [RANDOM] [ROUNDS]
#
# DIR holds the backing file (default /tmp/nbd-bench: put it on the disk you
# want to measure; tmpfs makes flushes free). Results go to stdout.
set -euo pipefail
cd "$(dirname "$0")/../../.."
DIR=${1:-/tmp/nbd-bench}
MIB=${2:-512}
RANDOM_WRITES=${3:-1000}
ROUNDS=${4:-3}
cargo build --release -q -p rgfs-nbd
B=${CARGO_TARGET_DIR:-target}/release/rgfs-nbd
mkdir -p "$DIR"
IMG=$DIR/bench.img
SERVER=
stop() { if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; SERVER=; fi; }
trap 'stop; rm -f "$DIR"/*.sock "$DIR/serve.out" "$IMG"' EXIT

# A new backing file for every measurement, written by nobody yet.
fresh() { stop; rm -f "$IMG" "$DIR/serve.out"; truncate -s $((MIB + 64))M "$IMG"; sync; }
bench() { echo "== $1"; "$B" bench "$2" --mib "$MIB" --random "$RANDOM_WRITES"; }

for round in $(seq "$ROUNDS"); do
  echo "### round $round"
  fresh
  bench "direct (FileDevice)" "$IMG"

  fresh
  "$B" serve --export bench="$IMG" --unix "$DIR/rgfs.sock" >"$DIR/serve.out" 2>/dev/null &
  SERVER=$!
  until grep -q listening "$DIR/serve.out" 2>/dev/null; do sleep 0.1; done
  bench "rgfs-nbd, nbd+unix" "nbd+unix:///bench?socket=$DIR/rgfs.sock"

  fresh
  "$B" serve --export bench="$IMG" --listen 127.0.0.1:0 >"$DIR/serve.out" 2>/dev/null &
  SERVER=$!
  until grep -q listening "$DIR/serve.out" 2>/dev/null; do sleep 0.1; done
  bench "rgfs-nbd, TCP 127.0.0.1" "nbd://127.0.0.1:$(sed -n 's/^listening on 127.0.0.1://p' "$DIR/serve.out")/bench"

  if command -v qemu-nbd >/dev/null; then
    fresh
    qemu-nbd -f raw --cache=writeback --persistent --shared=4 -x bench -k "$DIR/qemu.sock" "$IMG" &
    SERVER=$!
    until [ -S "$DIR/qemu.sock" ]; do sleep 0.1; done
    bench "qemu-nbd --cache=writeback, nbd+unix" "nbd+unix:///bench?socket=$DIR/qemu.sock"
  fi
done
