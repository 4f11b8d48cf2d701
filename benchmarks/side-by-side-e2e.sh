#!/usr/bin/env bash
# End to end beside Postfix in one run: Postfix's SMTP injection (smtp-source, 20 sessions) then
# mqd fed by 4 writers renaming files into its spool (mqbench.py throughput), one daemon and
# `queue.workers = 2`; C smtp-sink on 127.0.0.1:2525 for both, fsync on, bytecode cached.
# Needs root (Postfix) and ../shared/bench/postfix-setup.sh done once.
#
#   sudo N=10000 benchmarks/side-by-side-e2e.sh
#   sudo BASE=/tmp WORKERS_LIST="1" benchmarks/side-by-side-e2e.sh
#
# BASE is where each mqd run makes its own new spool and queue (default /var/spool/mqd-bench,
# beside Postfix's /var/spool/postfix, where a root install keeps its spool). Before each run
# the script times 500 file creations in the directory files are created in (mqd's spool,
# Postfix's incoming/): on an ext4 without a journal, as this project's VM has, creating a file
# costs ~0.5-1.2 ms of kernel time in a directory where thousands were just created and deleted
# (ext4 then scans the inode bitmap past recently freed inodes), against ~20 us with a journal,
# and the writers pay that per message. The probe shows which this run had. benchmarks/
# journaled-fs.sh puts both on a fresh ext4 with a journal; see docs/performance.md.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BENCH="${BENCH:-$HERE/../../shared/bench}"
MQD="${MQD:-$HERE/../.venv/bin/mqd}"
N="${N:-10000}"; SIZE="${SIZE:-2048}"; PORT="${PORT:-2525}"
WORKERS_LIST="${WORKERS_LIST:-1 2}"
BASE="${BASE:-/var/spool/mqd-bench}"
[ "$(id -u)" = 0 ] || { echo "run as root (postfix)" >&2; exit 1; }
[ -f "$BENCH/mqbench.py" ] || { echo "no mqbench.py in $BENCH (set BENCH)" >&2; exit 1; }
[ -x "$MQD" ] || { echo "no mqd at $MQD (set MQD)" >&2; exit 1; }
# As after a real install: compiled once, not at every start (see benchmarks/README.md).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-${TMPDIR:-/tmp}/mqd-bench-pycache}"
mkdir -p "$BASE"
RUN="$(mktemp -d "$BASE/e2e-XXXXXX")"
RES="$RUN/results.jsonl"
PIDFILE="$RUN/mqd.pid"
cleanup() {
  [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null || true
  postfix stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

probe() {  # µs of wall and of kernel time per file created (and unlinked) in directory $1
  python3 - "$1" <<'PY'
import os, sys, time
d, n = sys.argv[1], 500
made = []  # removed even if interrupted: one of the directories is Postfix's incoming/
try:
    t, c = time.perf_counter(), os.times()
    for i in range(n):
        made.append(f"{d}/.probe-{i}.tmp")
        os.close(os.open(made[-1], os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600))
    wall, sys_s = time.perf_counter() - t, os.times().system - c.system
finally:
    for path in made:
        if os.path.exists(path):
            os.unlink(path)
print(f"create probe in {d}: {1e6 * wall / n:.0f} us per file, {1e6 * sys_s / n:.0f} us kernel")
PY
}

echo "== Postfix SMTP injection N=$N (smtp-source, 20 sessions)"
postfix stop >/dev/null 2>&1 || true
postsuper -d ALL >/dev/null 2>&1 || true
probe /var/spool/postfix/incoming
postfix start >/dev/null 2>&1
sleep 1
timeout 900 python3 "$BENCH/mqbench.py" throughput --label postfix-smtp --n "$N" --size "$SIZE" \
  --parallel 20 --port "$PORT" --smtp-source 127.0.0.1:25 \
  --sut-pidfile /var/spool/postfix/pid/master.pid --out "$RES" >/dev/null || true
postfix stop >/dev/null 2>&1 || true

for workers in $WORKERS_LIST; do
  WORK="$RUN/workers-$workers"  # new directories: not the last run's churned ones (above)
  mkdir -p "$WORK/spool" "$WORK/queue"
  cat > "$WORK/mqd.toml" <<TOML
[queue]
dir = "$WORK/queue"
bounce_sender = "mailer-daemon@bench.localdomain"
workers = $workers

[[spool]]
path = "$WORK/spool"
relay = "sink"
allowed_senders = ["bench@bench.localdomain"]

[relays.sink]
plugin = "smtp"
host = "127.0.0.1"
port = $PORT
security = "none"
TOML
  echo "== mqd end to end N=$N, 4 writers, workers=$workers"
  probe "$WORK/spool"
  MQD_CONFIG="$WORK/mqd.toml" setsid "$MQD" run >>"$WORK/mqd.log" 2>&1 &
  echo $! > "$PIDFILE"
  sleep 2  # started and watching the spool
  timeout 900 python3 "$BENCH/mqbench.py" throughput --label "mqd-workers-$workers" --n "$N" \
    --size "$SIZE" --parallel 4 --port "$PORT" --spool-dir "$WORK/spool" \
    --sut-pidfile "$PIDFILE" --out "$RES" >/dev/null || true
  kill "$(cat "$PIDFILE")" 2>/dev/null || true
  sleep 2
  rm -f "$PIDFILE"
done

python3 - "$RES" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
postfix = next((r for r in rows if r["label"] == "postfix-smtp"), {})
print(f"{'':18} {'msg/s':>8} {'ratio':>6} {'CPU ms/msg':>10} {'inject s':>8} {'writers CPU s':>13}")
for r in rows:
    e2e, pf = r.get("e2e_msgs_per_s"), postfix.get("e2e_msgs_per_s")
    ratio = f"{e2e / pf:.2f}x" if e2e and pf and r is not postfix else ""
    print(f"{r['label']:18} {e2e or '-':>8} {ratio:>6} {r.get('sut_cpu_ms_per_msg') or '-':>10} "
          f"{r.get('inject_s', '-'):>8} {r.get('injector_cpu_s', '-'):>13}")
PY
echo "raw results: $RES"
