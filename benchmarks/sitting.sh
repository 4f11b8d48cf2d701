#!/usr/bin/env bash
# One sitting of docs/performance.md's side-by-side table, in the order its figures were taken:
# end to end (Postfix's SMTP injection, then mqd with one daemon and with queue.workers = 2),
# backlog drain and latency beside Postfix with one daemon, then with two workers, then the
# cost of mqd sendmail. Needs root (Postfix) and ../shared/bench/postfix-setup.sh done once;
# ~6 minutes on the project's 2-core machine (~14 with FLEET=1, the default: the PostgreSQL
# store and the network sources, which need PostgreSQL and RabbitMQ on 127.0.0.1). The 100,000-message run is separate
# (bench.py --only big-queue: several minutes).
#
#   sudo benchmarks/journaled-fs.sh up          # the journaled ext4 the table was measured on
#   sudo benchmarks/sitting.sh [OUT]            # writes OUT (default /tmp/mqd-sitting-<time>)
#   sudo benchmarks/journaled-fs.sh down
#
# BASE (mqd's end-to-end spools and queues) and TMPDIR (everything else) default to the image's
# directories when it is mounted, else to /var/spool/mqd-bench and /tmp.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
BENCH="${BENCH:-$HERE/../../shared/bench}"
VENV="${VENV:-$HERE/../.venv}"
OUT="${1:-/tmp/mqd-sitting-$(date -u +%Y%m%dT%H%M%S)}"
if mountpoint -q /mnt/mqd-bench 2>/dev/null; then
  BASE="${BASE:-/mnt/mqd-bench/spool}"; export TMPDIR="${TMPDIR:-/mnt/mqd-bench/tmp}"
fi
BASE="${BASE:-/var/spool/mqd-bench}"; export TMPDIR="${TMPDIR:-/tmp}"
[ "$(id -u)" = 0 ] || { echo "run as root (postfix)" >&2; exit 1; }
[ -f "$BENCH/side-by-side.sh" ] || { echo "no side-by-side.sh in $BENCH (set BENCH)" >&2; exit 1; }
# As after a real install: compiled once, not at every start (see README.md).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-$TMPDIR/mqd-bench-pycache}"
mkdir -p "$OUT"
{ echo "sitting $(date -u +%FT%TZ), code $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo '?')"
  uptime; } | tee "$OUT/summary.txt"
BASE="$BASE" N=10000 "$HERE/side-by-side-e2e.sh" > "$OUT/e2e.txt" 2>&1
MQD="$VENV/bin/mqd" N=10000 "$BENCH/side-by-side.sh" > "$OUT/one-daemon.txt" 2>&1
MQD="$HERE/mqd-workers" MQD_BIN="$VENV/bin/mqd" N=10000 "$BENCH/side-by-side.sh" \
  > "$OUT/two-workers.txt" 2>&1
"$VENV/bin/python" "$HERE/bench.py" --only sendmail > "$OUT/sendmail.txt" 2>&1
# The fleet's store and the network hand-overs: one node on the PostgreSQL store (the local
# server, a fresh schema) beside Postfix's drain; [[smtpd]] fed by smtp-source as Postfix's
# SMTP injection was in e2e.txt; HTTP submit and the RabbitMQ mailbox (steady state).
if [ "${FLEET:-1}" = 1 ]; then
  MQD="$HERE/mqd-pg" MQD_PG_BIN="$VENV/bin/mqd" N=10000 "$BENCH/side-by-side.sh" \
    > "$OUT/postgresql.txt" 2>&1
  MQD="$HERE/mqd-workers" MQD_BIN="$HERE/mqd-pg" MQD_PG_BIN="$VENV/bin/mqd" N=10000 \
    "$BENCH/side-by-side.sh" > "$OUT/postgresql-two-workers.txt" 2>&1
  BASE="$BASE" MQD="$VENV/bin/mqd" N=10000 "$HERE/smtpd-side-by-side.sh" > "$OUT/smtpd.txt" 2>&1
  BASE="$BASE" MQD="$VENV/bin/mqd" WORKERS=2 N=10000 "$HERE/smtpd-side-by-side.sh" \
    >> "$OUT/smtpd.txt" 2>&1
  "$VENV/bin/python" "$HERE/submit.py" > "$OUT/submit.txt" 2>&1
  "$VENV/bin/python" "$HERE/mailbox.py" > "$OUT/mailbox.txt" 2>&1
  "$HERE/mqd-pg" clean > /dev/null 2>&1 || true  # the runs' schemas
fi
{
  echo "== end to end (msg/s, ratio to Postfix's SMTP injection, CPU ms/msg)"
  grep -E "^(postfix-smtp|mqd-workers)" "$OUT/e2e.txt"
  for run in one-daemon two-workers; do
    echo "== $run: drain and latency beside Postfix"
    grep -E "^\|" "$OUT/$run.txt"
    tail -1 "$OUT/$run.txt"
  done
  if [ "${FLEET:-1}" = 1 ]; then
    for run in postgresql postgresql-two-workers; do
      echo "== $run (the PostgreSQL store, one node): drain and latency beside Postfix"
      grep -E "^\|" "$OUT/$run.txt"
      tail -1 "$OUT/$run.txt"
    done
    echo "== [[smtpd]] fed by smtp-source (compare with postfix-smtp above)"
    grep -E "^(mqd-smtpd|  )" "$OUT/smtpd.txt" || tail -3 "$OUT/smtpd.txt"
    echo "== HTTP submit and the RabbitMQ mailbox"
    tail -8 "$OUT/submit.txt"
    tail -4 "$OUT/mailbox.txt"
  fi
  echo "== mqd sendmail against a bare python -c pass (ratios)"
  "$VENV/bin/python" - "$OUT/sendmail.txt" <<'PY'
import json, sys
result = json.loads(open(sys.argv[1]).read().splitlines()[-1])
for key, value in result.items():
    if key.endswith("ratio") or key == "python_pass_ms":
        print(f"{key:28} {value}")
PY
  echo "ended $(date -u +%TZ)"
} | tee -a "$OUT/summary.txt"
