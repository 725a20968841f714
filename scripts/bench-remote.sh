#!/usr/bin/env bash
# thawd for remote clients, measured (issue 21): a client in another network namespace
# talks to thawd over TCP + TLS with a token.
#
#   1. pooled restore -> ready: 20 restores of a snapshot with a warm pool of 1 (each
#      waits for the pool to be full again), median as the client sees it (a new TLS
#      connection per request, as `thaw restore` makes one; and on one kept-alive TLS
#      connection) and the daemon's ready_ms; the same over the Unix socket;
#   2. a new request (GET /v1/health, new TLS connection) while 500 idle TLS
#      connections are open, against the same before they were opened;
#   3. 1000 requests with bad tokens, then the median of good requests against before.
#
# Needs root (ip netns), openssl, python3, QEMU and the default guest (built into
# $XDG_CACHE_HOME if missing). Uses target/release binaries unless THAW_BIN says:
#   cargo build --release -p thaw-daemon -p thaw-cli && sudo -E scripts/bench-remote.sh
# Prints one line per figure and, with --json, a JSON object at the end.
set -euo pipefail

BIN=${THAW_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
JSON=${1:-}
for b in thaw thawd; do
    [[ -x $BIN/$b ]] || { echo "bench-remote: $BIN/$b not found (cargo build --release -p thaw-daemon -p thaw-cli)" >&2; exit 1; }
done
for tool in ip openssl python3; do
    command -v $tool >/dev/null || { echo "bench-remote: $tool is needed" >&2; exit 1; }
done

work=$(mktemp -d /tmp/thaw-bench-remote-XXXXXX)
ns=thaw-bench-$$
hv=tbh$$
daemon=
export THAW_HOME=$work/home
mkdir -p "$THAW_HOME"
cleanup() {
    set +e
    "$BIN/thaw" stop --all >/dev/null 2>&1
    [[ -n $daemon ]] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    ip link del "$hv" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# The client's namespace, linked to this one: thawd listens on 10.78.0.1.
ip netns add "$ns"
ip link add "$hv" type veth peer name tbn$$ netns "$ns"
ip addr add 10.78.0.1/24 dev "$hv"
ip link set "$hv" up
ip -n "$ns" addr add 10.78.0.2/24 dev tbn$$
ip -n "$ns" link set tbn$$ up
ip -n "$ns" link set lo up

# A CA and a certificate for 10.78.0.1.
(
    cd "$work"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
        -out ca.pem -days 2 -subj /CN=thaw-bench-ca 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem \
        -out cert.csr -subj /CN=10.78.0.1 2>/dev/null
    printf 'subjectAltName=IP:10.78.0.1\n' >san.ext
    openssl x509 -req -in cert.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem \
        -days 2 -extfile san.ext 2>/dev/null
)
token=$("$BIN/thaw" token new bench --tokens "$work/tokens")

THAW_LOG=warn "$BIN/thawd" --listen 10.78.0.1:7420 --tls-cert "$work/cert.pem" \
    --tls-key "$work/key.pem" --tokens "$work/tokens" 2>"$work/thawd.log" &
daemon=$!
for _ in $(seq 300); do [[ -S $THAW_HOME/thawd.sock ]] && break; sleep 0.1; done
[[ -S $THAW_HOME/thawd.sock ]] || { cat "$work/thawd.log" >&2; exit 1; }

echo "bench-remote: booting and snapshotting the default guest" >&2
"$BIN/thaw" boot bench-src >/dev/null
"$BIN/thaw" snapshot bench-src base --stop >/dev/null

export BENCH_TOKEN=$token BENCH_CA=$work/ca.pem BENCH_SOCKET=$THAW_HOME/thawd.sock BENCH_JSON=$JSON
ip netns exec "$ns" python3 - <<'EOF'
import http.client, json, os, socket, ssl, statistics, sys, time

HOST, PORT = "10.78.0.1", 7420
TOKEN, CA, SOCK = os.environ["BENCH_TOKEN"], os.environ["BENCH_CA"], os.environ["BENCH_SOCKET"]
ctx = ssl.create_default_context(cafile=CA)

class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(SOCK)

def call(method, path, body=None, via="tcp", token=TOKEN, conn=None):
    """One request on a new connection (or on `conn`, kept open): (status, JSON, ms)."""
    t = time.perf_counter()
    c = conn or (http.client.HTTPSConnection(HOST, PORT, context=ctx) if via == "tcp" else Unix("thawd"))
    headers = {} if conn else {"Connection": "close"}
    if token and via == "tcp":
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    c.request(method, path, data, headers)
    r = c.getresponse()
    raw = r.read()
    ms = (time.perf_counter() - t) * 1e3
    if not conn:
        c.close()
    return r.status, (json.loads(raw) if raw else None), ms

def wait_pool(ready):
    for _ in range(3000):
        _, pools, _ = call("GET", "/v1/pools", via="unix")
        if any(p["tag"] == "base" and p["ready"] >= ready for p in pools):
            return
        time.sleep(0.05)
    sys.exit("bench-remote: the pool did not fill")

def restores(via, n=20, keep=False):
    client, server = [], []
    conn = None
    if keep:
        conn = http.client.HTTPSConnection(HOST, PORT, context=ctx)
        conn.connect()
    for i in range(n):
        wait_pool(1)
        time.sleep(0.3)  # the refill's QEMU settles before the next take
        name = f"r-{via}{'-k' if keep else ''}-{i}"
        st, rep, ms = call("POST", "/v1/snapshots/base/restore", {"name": name}, via=via, conn=conn)
        assert st == 201, (st, rep)
        assert rep[0]["breakdown"]["source"] == "pool", rep
        client.append(ms)
        server.append(rep[0]["ready_ms"])
        st, _, _ = call("DELETE", f"/v1/vms/{name}", via=via, conn=conn)
        assert st == 200
    return statistics.median(client), statistics.median(server)

def health_median(n=20, token=TOKEN):
    out = []
    for _ in range(n):
        st, _, ms = call("GET", "/v1/health", token=token)
        assert st == 200, st
        out.append(ms)
    return statistics.median(out)

st, _, _ = call("PUT", "/v1/snapshots/base/pool", {"size": 1}, via="unix")
assert st == 200
figures = {}
c, s = restores("tcp")
figures["restore_tls_client_ms"], figures["restore_tls_ready_ms"] = c, s
c, s = restores("tcp", keep=True)
figures["restore_tls_kept_alive_client_ms"] = c
c, s = restores("unix")
figures["restore_unix_client_ms"], figures["restore_unix_ready_ms"] = c, s

figures["health_tls_ms"] = health_median()
idle = []
for _ in range(500):
    s = ctx.wrap_socket(socket.create_connection((HOST, PORT)), server_hostname=HOST)
    idle.append(s)
figures["health_tls_with_500_idle_ms"] = health_median()
for s in idle:
    s.close()

before = health_median()
bad = 0
for i in range(1000):
    st, _, _ = call("GET", "/v1/vms", token=f"thaw_bad{i}")
    bad += st == 401
assert bad == 1000, bad
figures["health_tls_before_bad_tokens_ms"] = before
figures["health_tls_after_1000_bad_tokens_ms"] = health_median()

for k, v in figures.items():
    print(f"{k:40} {v:8.2f}")
if os.environ.get("BENCH_JSON") == "--json":
    print(json.dumps(figures))
EOF
