#!/usr/bin/env bash
# mqd's SMTP submission ([[smtpd]]) end to end, measured as Postfix's SMTP injection is measured
# by ../shared/bench/side-by-side.sh and benchmarks/side-by-side-e2e.sh: Postfix's smtp-source
# (C, 20 sessions, one connection per message as it does by default, SIZE-byte messages) pushes
# N messages into mqd's listener; mqd relays them to Postfix's C smtp-sink; the time is from
# the first connection until the sink has all N. mqbench.py's throughput measurement does the
# driving and counting; it prints msg/s and mqd's CPU per message (its process tree, /proc).
# Needs smtp-source and smtp-sink (../shared/bench/postfix-setup.sh), not Postfix itself, and
# not root. fsync on; bytecode cached as after an install.
#
#   N=5000 benchmarks/smtpd-side-by-side.sh
#   N=5000 SESSIONS=20 ROUNDS=3 BASE=/tmp benchmarks/smtpd-side-by-side.sh
#   WORKERS=2 N=5000 benchmarks/smtpd-side-by-side.sh      # queue.workers = 2
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BENCH="${BENCH:-$HERE/../../shared/bench}"
MQD="${MQD:-$HERE/../.venv/bin/mqd}"
N="${N:-5000}"; SIZE="${SIZE:-2048}"; SESSIONS="${SESSIONS:-20}"; ROUNDS="${ROUNDS:-1}"
WORKERS="${WORKERS:-1}"  # queue.workers: every worker listens (SO_REUSEPORT)
BASE="${BASE:-${TMPDIR:-/tmp}}"
[ -f "$BENCH/mqbench.py" ] || { echo "no mqbench.py in $BENCH (set BENCH)" >&2; exit 1; }
[ -x "$MQD" ] || { echo "no mqd at $MQD (set MQD)" >&2; exit 1; }
for tool in smtp-source smtp-sink; do
  command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] ||
    { echo "no $tool: run ../shared/bench/postfix-setup.sh" >&2; exit 1; }
done
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# Ports of their own (PORT / SINK_PORT to choose): other benchmarks may hold 2525 at the time.
PORT="${PORT:-$(free_port)}"; SINK_PORT="${SINK_PORT:-$(free_port)}"
# As after a real install: compiled once, not at every start (see benchmarks/README.md).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-${TMPDIR:-/tmp}/mqd-bench-pycache}"
RUN="$(mktemp -d "$BASE/mqd-smtpd-sbs-XXXXXX")"
RES="$RUN/results.jsonl"
PIDFILE="$RUN/mqd.pid"
cleanup() {
  if [ -f "$PIDFILE" ]; then kill "$(cat "$PIDFILE")" 2>/dev/null || true; fi
}
trap cleanup EXIT

mkdir -p "$RUN/queue" "$RUN/spool"
cat > "$RUN/mqd.toml" <<TOML
[queue]
dir = "$RUN/queue"
workers = $WORKERS
bounce_sender = "mailer-daemon@bench.localdomain"

[[spool]]
path = "$RUN/spool"
relay = "sink"
allowed_senders = ["bench@bench.localdomain"]

[[smtpd]]
listen = ["127.0.0.1:$PORT"]
relay = "sink"
allowed_senders = ["bench@bench.localdomain"]
max_connections = 100

[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = $SINK_PORT
security = "none"
TOML
MQD_CONFIG="$RUN/mqd.toml" setsid "$MQD" --log-level warning run >>"$RUN/mqd.log" 2>&1 &
echo $! > "$PIDFILE"
python3 - "$PORT" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("mqd did not listen within 30 s: see its log")
        time.sleep(0.05)
PY
for round in $(seq "$ROUNDS"); do
  echo "== mqd [[smtpd]] end to end N=$N, smtp-source $SESSIONS sessions, round $round"
  timeout 900 python3 "$BENCH/mqbench.py" throughput --label "mqd-smtpd-w$WORKERS" --n "$N" \
    --size "$SIZE" --parallel "$SESSIONS" --port "$SINK_PORT" --linger 1 \
    --smtp-source "127.0.0.1:$PORT" --sut-pidfile "$PIDFILE" --out "$RES" >/dev/null || true
done
kill "$(cat "$PIDFILE")" 2>/dev/null || true
rm -f "$PIDFILE"

python3 - "$RES" <<'PY'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'':12} {'e2e msg/s':>9} {'steady':>7} {'inject msg/s':>12} {'CPU ms/msg':>10} "
      f"{'busy cores':>10} {'load':>5}")
for r in rows:
    print(f"{r['label']:12} {r.get('e2e_msgs_per_s') or '-':>9} {r.get('steady_msgs_per_s') or '-':>7} "
          f"{r.get('inject_msgs_per_s', '-'):>12} {r.get('sut_cpu_ms_per_msg') or '-':>10} "
          f"{r.get('machine_busy_cores', '-'):>10} {os.getloadavg()[0]:5.1f}"
          + (f"  ERROR: {r['error']}" if r.get("error") else ""))
PY
echo "raw results: $RES (mqd's log: $RUN/mqd.log)"
