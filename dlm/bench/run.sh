#!/usr/bin/env bash
# Lock manager benchmarks for docs/BENCHMARKS.md: three rgfs-dlmd on 127.0.0.1
# (node 1 serves clients on a unix socket, node 2 on TCP), `rgfs-dlm bench` for
# locally and remotely mastered resources, then Redis and etcd loops on the same
# machine. Needs: cargo build --release -p rgfs-dlm; apt-get install -y redis-server
# redis-tools etcd-server python3. Every process it starts is stopped by PID.
# Environment: PAIRS (default 20000), DLMD_THREADS (rgfs-dlmd --threads, default 1),
# TRANSPORTS (client transports, default "framed grpc"; "default" passes no
# --transport, for builds from before it), PIN=1 to run every server and client on
# CPU 0 only (taskset), ONLY_RGFS=1 to skip Redis and etcd, POLL_US (the
# configuration's [tuning] poll_us for daemons and clients; default: not set, 200).
set -euo pipefail
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
# CPU seconds (user + system) a process has used so far.
cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$1/stat"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

head -c 32 /dev/urandom > "$WORK/authkey"
{
  echo 'cluster_name = "bench"'; echo 'key_file = "authkey"'
  for i in 1 2 3; do
    echo "[[node]]"; echo "id = $i"; echo "name = \"n$i\""; echo "address = \"127.0.0.1:$(port)\""
    [ "$i" = 1 ] && echo "client_socket = \"$WORK/n1.sock\""
  done
  if [ -n "${POLL_US:-}" ]; then echo "[tuning]"; echo "poll_us = $POLL_US"; fi
} > "$WORK/dlm.toml"
PIN_CMD=(); [ -n "${PIN:-}" ] && PIN_CMD=(taskset -c 0)
for i in 1 2 3; do
  "${PIN_CMD[@]}" "$BIN/rgfs-dlmd" --config "$WORK/dlm.toml" --node-id "$i" --threads "${DLMD_THREADS:-1}" > "$WORK/n$i.out" 2> "$WORK/n$i.log" &
  PIDS+=($!)
done
for i in 1 2 3; do until grep -q ready "$WORK/n$i.out" 2>/dev/null; do sleep 0.1; done; done

PAIRS=${PAIRS:-20000}
for node in 1 2; do
  for transport in ${TRANSPORTS:-framed grpc}; do
    for master in local remote; do
      for inflight in 1 64; do
        pairs=$PAIRS; [ "$inflight" = 64 ] && pairs=$((PAIRS * 10))
        echo "# node $node ($( [ $node = 1 ] && echo unix socket || echo TCP )): rgfs-dlm --transport $transport bench bench --pairs $pairs --inflight $inflight --master $master"
        tflag=(--transport "$transport"); [ "$transport" = default ] && tflag=()
        before=$(cpu_s "${PIDS[$((node - 1))]}")
        "${PIN_CMD[@]}" "$BIN/rgfs-dlm" --config "$WORK/dlm.toml" --node-id "$node" "${tflag[@]}" bench bench --pairs "$pairs" --inflight "$inflight" --master "$master"
        echo "daemon n$node cpu_s=$(awk -v a="$before" -v b="$(cpu_s "${PIDS[$((node - 1))]}")" 'BEGIN { printf "%.2f", b - a }') (warm-up included)"
      done
    done
  done
done

echo "# rgfs-dlm engine-bench --pairs 1000000"
"$BIN/rgfs-dlm" engine-bench --pairs 1000000
[ -n "${ONLY_RGFS:-}" ] && exit 0
RPORT=$(port)
"${PIN_CMD[@]}" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no > "$WORK/redis.log" 2>&1 &
PIDS+=($!)
until redis-cli -p "$RPORT" ping > /dev/null 2>&1; do sleep 0.1; done
echo "# python3 lock_loops.py redis PORT $PAIRS"
"${PIN_CMD[@]}" python3 "$HERE/lock_loops.py" redis "$RPORT" "$PAIRS"
for c in 1 64; do
  echo "# redis-benchmark -c $c -n $((PAIRS * 5)) SET lock:__rand_int__ owner NX PX 30000 (then DEL)"
  "${PIN_CMD[@]}" redis-benchmark -p "$RPORT" -c "$c" -n $((PAIRS * 5)) -r 1000000 -q SET 'lock:__rand_int__' owner NX PX 30000 | tr '\r' '\n' | tail -1
  "${PIN_CMD[@]}" redis-benchmark -p "$RPORT" -c "$c" -n $((PAIRS * 5)) -r 1000000 -q DEL 'lock:__rand_int__' | tr '\r' '\n' | tail -1
done

if ! command -v etcd > /dev/null; then echo "# etcd not installed: skipped"; exit 0; fi
EPORT=$(port); PPORT=$(port)
etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" \
     --advertise-client-urls "http://127.0.0.1:$EPORT" --listen-peer-urls "http://127.0.0.1:$PPORT" \
     --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" --initial-cluster "bench=http://127.0.0.1:$PPORT" > "$WORK/etcd.log" 2>&1 &
PIDS+=($!)
until curl -sf "http://127.0.0.1:$EPORT/health" > /dev/null; do sleep 0.2; done
echo "# python3 lock_loops.py etcd PORT $((PAIRS / 10))"
python3 "$HERE/lock_loops.py" etcd "$EPORT" $((PAIRS / 10))
