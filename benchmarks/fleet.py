"""A backlog drained by mqd on the file store and on PostgreSQL with 1, 2 and 3 nodes, into
bench.py's sink (aiosmtpd in this process). Prints figures (JSON lines and a table); never
fails on timing.

For PostgreSQL it also prints what the server spent: CPU ms per message (utime + stime of
every ``postgres`` process, from /proc, over the drain) and transactions per message
(``pg_stat_database.xact_commit`` of the database, delta / messages). Both count everything
the server did meanwhile: run it on a quiet server (other users' work shows up in them).

    .venv/bin/python benchmarks/fleet.py --messages 3000
    MQD_BENCH_PG_DSN=postgresql://mqd@db/mqd .venv/bin/python benchmarks/fleet.py
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
from bench import CLK, Daemon, Sink, drop

BASE = os.environ.get("MQD_BENCH_PG_DSN", "postgresql://root@127.0.0.1:5432/test")


def postgres_cpu() -> float:
    """CPU seconds of every process named postgres on this machine, the backends that ended
    included (in the postmaster's children's time)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name == "postgres" or name.startswith("postgres:"):
            fields = text.rsplit(")", 1)[1].split()
            # its own time, and its ended children's (the postmaster reaps the backends)
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / CLK


def backends_cpu(database: str) -> float:
    """CPU seconds of the live backends connected to ``database`` (their process title names
    it): the nodes' own share of the server, apart from other users of a shared one (the WAL
    writer and the checkpointer are left out)."""
    total = 0
    for pid in Path("/proc").glob("[0-9]*"):
        try:
            title = (pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not title.startswith("postgres:") or f" {database} " not in title:
                continue
            fields = (pid / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK


def commits() -> int:
    with psycopg.connect(BASE, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def wal_bytes() -> int:
    """WAL written by the whole server (``pg_stat_wal``: other users' work counts too)."""
    with psycopg.connect(BASE, autocommit=True) as conn:
        row = conn.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()
    return int(row[0]) if row else 0


def print_tables(dsn: str, n: int) -> None:
    """Rows inserted, updated (HOT among them) and deleted per message in each of the run's
    tables, with the indexes each row version touches (a HOT update touches none)."""
    query = """
        SELECT t.relname, t.n_tup_ins, t.n_tup_upd, t.n_tup_hot_upd, t.n_tup_del,
            (SELECT count(*) FROM pg_index i WHERE i.indrelid = t.relid)
        FROM pg_stat_user_tables t WHERE t.schemaname = current_schema() ORDER BY 1
    """
    time.sleep(1.0)  # the backends that ended flushed their counts (pgstat, within a second)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(query).fetchall()
    print("# table: inserted / updated (HOT) / deleted per message, indexes", flush=True)
    for name, ins, upd, hot, dele, indexes in rows:
        if ins or upd or dele:
            print(
                f"#   {name}: {ins / n:.2f} / {upd / n:.2f} ({hot / n:.2f}) / {dele / n:.2f}, "
                f"{indexes}",
                flush=True,
            )


def config(
    work: Path, name: str, port: int, dsn: str | None, concurrency: int, tracking: bool
) -> Path:
    spool = work / name / "spool"
    spool.mkdir(parents=True)
    store = f'store = "postgresql"\ndsn = "{dsn}"\nnode = "{name}"\n' if dsn else ""
    path = work / f"{name}.toml"
    path.write_text(
        f'[queue]\ndir = "{work / name / "queue"}"\nconcurrency = {concurrency}\n{store}'
        f'[[spool]]\npath = "{spool}"\nallowed_senders = ["bench@bench.test"]\n'
        f'[relays.sink]\nplugin = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        f"[tracking]\nenabled = {'true' if tracking else 'false'}\n"
    )
    return path


def run(
    sink: Sink,
    store: str,
    nodes: int,
    n: int,
    size: int,
    concurrency: int,
    profile: Path | None = None,
    tracking: bool = False,
    tables: bool = False,
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"mqd-fleet-{store}-{nodes}-"))
    schema = f"mqd_bench_{secrets.token_hex(4)}"
    dsn = None
    if store == "postgresql":
        dsn = f"{BASE}{'&' if '?' in BASE else '?'}options={quote(f'-csearch_path={schema}')}"
        with psycopg.connect(BASE, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"'.encode())
    try:
        configs = [
            config(work, f"node-{i + 1}", sink.port, dsn, concurrency, tracking)
            for i in range(nodes)
        ]
        if dsn:  # by the mqd measured (--mqd: another checkout's schema may differ)
            subprocess.run(
                [bench.MQD, "--config", str(configs[0]), "db", "upgrade"],
                check=True,
                stdout=subprocess.DEVNULL,
                env=bench.ENV,
            )
        for number in range(n):  # the backlog, spread over the nodes' spools
            drop(work / f"node-{number % nodes + 1}" / "spool", number, size)
        sink.reset()
        cpu0, xact0 = postgres_cpu(), commits() if dsn else 0
        wal0 = wal_bytes() if dsn else 0
        started = time.monotonic()
        daemons = [
            Daemon(path, work / f"{path.stem}.log", profile if dsn and i == 0 else None)
            for i, path in enumerate(configs)
        ]
        ok = sink.wait_for(n, 900)
        elapsed = time.monotonic() - started
        mqd_cpu = sum(daemon.cpu() for daemon in daemons)
        own_cpu = backends_cpu(psycopg.conninfo.conninfo_to_dict(BASE)["dbname"]) if dsn else 0
        xacts = (commits() - xact0) if dsn else 0
        for daemon in daemons:
            daemon.stop()
        pg_cpu = postgres_cpu() - cpu0  # the nodes' backends ended: counted by now
        wal = (wal_bytes() - wal0) if dsn else 0
        if dsn and tables:
            print_tables(dsn, n)
        arrivals = sorted(at for at, _ in sink.arrivals)
        steady = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
        return {
            "store": store, "nodes": nodes, "n": n, "ok": ok,
            "msgs_per_s": round(n / elapsed, 1), "steady_msgs_per_s": round(steady, 1),
            "mqd_cpu_ms_per_msg": round(mqd_cpu * 1000 / n, 2),
            "pg_cpu_ms_per_msg": round(pg_cpu * 1000 / n, 2) if dsn else None,
            "pg_backends_cpu_ms_per_msg": round(own_cpu * 1000 / n, 2) if dsn else None,
            "pg_xact_per_msg": round(xacts / n, 2) if dsn else None,
            "pg_wal_bytes_per_msg": round(wal / n) if dsn else None,
            "loadavg": os.getloadavg()[0],
        }  # fmt: skip
    finally:
        if dsn:
            with psycopg.connect(BASE, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--nodes", default="1,2,3", help="PostgreSQL node counts to run")
    parser.add_argument("--no-file", action="store_true", help="skip the file store's run")
    parser.add_argument(
        "--mqd", help="the mqd executable to run (another checkout's, for an A/B comparison)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="record the first node of each PostgreSQL run with py-spy into FILE (its overhead "
        "lowers the figures; summarise with benchmarks/stacks.py FILE)",
    )
    parser.add_argument(
        "--tracking",
        action="store_true",
        help="tracking on (its events in the queue's database, as mqd-pg and the sittings run "
        "it); off by default",
    )
    parser.add_argument(
        "--tables",
        action="store_true",
        help="print each table's rows inserted, updated (HOT) and deleted per message",
    )
    args = parser.parse_args()
    if args.mqd:
        bench.MQD = args.mqd
    sink = Sink()
    sink.controller.start()
    print(f"# loadavg before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results = []
    try:
        runs = [] if args.no_file else [("file", 1)]
        runs += [("postgresql", int(k)) for k in args.nodes.split(",")]
        for store, nodes in runs:
            result = run(
                sink,
                store,
                nodes,
                args.messages,
                args.size,
                args.concurrency,
                args.profile,
                args.tracking,
                args.tables,
            )
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        sink.controller.stop()
    print("\n| store | nodes | msgs/s (from start) | msgs/s (steady) | mqd CPU ms/msg "
          "| PostgreSQL CPU ms/msg (its backends) | transactions/msg | load |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['store']} | {r['nodes']} | {r['msgs_per_s']} | {r['steady_msgs_per_s']} "
            f"| {r['mqd_cpu_ms_per_msg']} | {r['pg_cpu_ms_per_msg'] or '-'} "
            f"({r['pg_backends_cpu_ms_per_msg'] or '-'}) "
            f"| {r['pg_xact_per_msg'] or '-'} | {r['loadavg']:.2f} |"
        )


if __name__ == "__main__":
    main()
