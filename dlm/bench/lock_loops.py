#!/usr/bin/env python3
"""Lock/unlock loops against Redis and etcd for docs/BENCHMARKS.md, stdlib only.

  lock_loops.py redis PORT PAIRS   SET key owner NX PX 30000, then DEL key
  lock_loops.py etcd  PORT PAIRS   txn put-if-absent (create_revision == 0), then delete
                                   (gRPC-JSON gateway of etcd 3.4, one persistent connection)

One client, one pair at a time; prints pairs/s and p50/p99 per operation in us.
The interpreter adds a few microseconds per operation; see BENCHMARKS.md.
"""
import base64, http.client, json, socket, sys, time


def report(name, lat_ns, elapsed):
    lat = sorted(lat_ns)
    pct = lambda p: lat[round((len(lat) - 1) * p)] / 1000
    pairs = len(lat) // 2
    print(f"{name} pairs={pairs} elapsed_s={elapsed:.3f} pairs_per_s={pairs / elapsed:.0f} "
          f"op_p50_us={pct(0.5):.1f} op_p99_us={pct(0.99):.1f}")


def timed_pairs(name, lock, unlock, pairs, warmup):
    """Runs warmup + pairs lock/unlock pairs one at a time; reports the last `pairs`."""
    lat = []
    for i in range(pairs + warmup):
        t0 = time.perf_counter_ns()
        lock()
        t1 = time.perf_counter_ns()
        unlock()
        t2 = time.perf_counter_ns()
        if i == warmup:
            start = t0
        if i >= warmup:
            lat += [t1 - t0, t2 - t1]
    report(name, lat, (time.perf_counter_ns() - start) / 1e9)


def redis(port, pairs):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")

    def cmd(*args):
        out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        s.sendall(out)
        return f.readline()

    def lock():
        assert cmd(b"SET", b"lock:a", b"owner", b"NX", b"PX", b"30000") == b"+OK\r\n"

    def unlock():
        assert cmd(b"DEL", b"lock:a") == b":1\r\n"

    timed_pairs("redis SET-NX/DEL", lock, unlock, pairs, 1000)


def etcd(port, pairs):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    b64 = lambda b: base64.b64encode(b).decode()

    def post(path, body):
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        return json.loads(conn.getresponse().read())

    lease = post("/v3/lease/grant", {"TTL": 60})["ID"]
    key = b64(b"lock/a")
    txn = {"compare": [{"key": key, "target": "CREATE", "create_revision": "0"}],
           "success": [{"request_put": {"key": key, "value": b64(b"owner"), "lease": lease}}]}
    def lock():
        assert post("/v3/kv/txn", txn).get("succeeded") is True

    def unlock():
        assert post("/v3/kv/deleterange", {"key": key}).get("deleted") == "1"

    timed_pairs("etcd txn-lock/delete", lock, unlock, pairs, 200)


if __name__ == "__main__":
    kind, port, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    {"redis": redis, "etcd": etcd}[kind](port, pairs)
