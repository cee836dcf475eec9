#!/usr/bin/env python3
"""What one archived and traced event costs SQLite, by table layout (issue 10).

A standalone measurement (Python's sqlite3, no Busbar): log entries of ~700 bytes
are written in commits of 100, as the store's writer groups them, and each
variant adds what history writes for them. Prints the CPU time per event of each
variant, the median of --rounds rounds (variants alternate within a round).
Python's own per-statement cost is in every figure; compare variants with each
other, not with the store's profile.

    python3 examples/history-rows.py [--events 60000] [--rounds 5] [VARIANT...]

Variants:
    log             log entries only (the baseline)
    archive-v6      + an archive row as main file version 6 wrote it (rowid table with
                    AUTOINCREMENT, an index on (archive, ingested_ms, id))
    archive-v7      + an archive row as version 7 writes it (one WITHOUT ROWID B-tree)
    trace           + a trace row in traces.db as version 5 writes it (own commit)
    trace-noseq     the same without the `traces_seq` index
    trace-main      the same, written in the log's own commit in the main file
    head-in-log     no trace row: source and type as columns of the log entry, with
                    one partial index over them
    head-thin       the same with the index over (tenant, bus, time, position) only
    both-rows       head-in-log and archive-v7 together (traced and archived, main file v8)
    both-in-log     traced and archived with no archive row: the archive served from the
                    log through one partial index over traced or archived entries
"""
import argparse
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time

BODY = os.urandom(700)
TRACE_BODY = json.dumps({"routed": True, "rules": []})
T0 = 1764770000000

TRACE_TABLE = """CREATE TABLE {name} (id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL,
    bus TEXT NOT NULL, event_id TEXT NOT NULL, received_ms INTEGER NOT NULL,
    source TEXT NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL, size INTEGER NOT NULL,
    replay TEXT, rules TEXT NOT NULL, body TEXT NOT NULL, event BLOB NOT NULL, seq INTEGER)"""
TRACE_INSERT = (
    "INSERT INTO traces (tenant, bus, event_id, received_ms, source, type, state, size,"
    " replay, rules, body, event, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def connect(path):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def trace_tables(conn, name, seq_index=True):
    conn.execute(TRACE_TABLE.format(name=name))
    conn.execute(
        f"CREATE INDEX {name}_head ON {name} (tenant, bus, received_ms, id, source, type, state)"
    )
    if seq_index:
        conn.execute(f"CREATE INDEX {name}_seq ON {name} (seq) WHERE seq IS NOT NULL")


def write_traces(conn, batch):
    """A trace row for each (log position, event id, ingest time) of `batch`:
    an unmatched event's, the commonest under load."""
    for seq, event_id, ms in batch:
        conn.execute(
            TRACE_INSERT,
            ("bench", "kept", event_id, ms, "bench.nomatch", "bench.type", "no_match",
             1000, None, "", TRACE_BODY, b"", seq),
        )


def run(variant, events, per=100):
    with tempfile.TemporaryDirectory() as dir:
        main = connect(os.path.join(dir, "busbar.db"))
        traces = connect(os.path.join(dir, "traces.db"))
        head = variant.startswith(("head-", "both-"))
        main.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT, bus TEXT,"
            " event_id TEXT, body BLOB, ingested_ms INT, archive_refs INT, source TEXT, type TEXT)"
        )
        if variant == "both-in-log":
            main.execute(
                "CREATE INDEX events_history ON events"
                " (tenant, bus, ingested_ms, seq, source, type, archive_refs)"
                " WHERE source IS NOT NULL OR archive_refs > 0"
            )
        if variant in ("head-in-log", "both-rows"):
            main.execute(
                "CREATE INDEX events_head ON events (tenant, bus, ingested_ms, seq, source, type)"
                " WHERE source IS NOT NULL"
            )
        if variant == "head-thin":
            main.execute(
                "CREATE INDEX events_head ON events (tenant, bus, ingested_ms, seq)"
                " WHERE source IS NOT NULL"
            )
        if variant == "archive-v6":
            main.execute(
                "CREATE TABLE archived (id INTEGER PRIMARY KEY AUTOINCREMENT, archive TEXT NOT NULL,"
                " ingested_ms INTEGER NOT NULL, tenant TEXT NOT NULL, bus TEXT NOT NULL,"
                " event_id TEXT NOT NULL, body BLOB NOT NULL, seq INTEGER)"
            )
            main.execute("CREATE INDEX archived_time ON archived (archive, ingested_ms, id)")
        if variant in ("archive-v7", "both-rows"):
            main.execute(
                "CREATE TABLE archive_rows (archive TEXT NOT NULL, ingested_ms INTEGER NOT NULL,"
                " pos INTEGER NOT NULL, seq INTEGER, tenant TEXT, bus TEXT, event_id TEXT,"
                " body BLOB, PRIMARY KEY (archive, ingested_ms, pos)) WITHOUT ROWID"
            )
        if variant in ("trace", "trace-noseq"):
            trace_tables(traces, "traces", seq_index=variant == "trace")
        if variant == "trace-main":
            trace_tables(main, "traces")
        log_insert = (
            "INSERT INTO events (tenant, bus, event_id, body, ingested_ms, archive_refs,"
            " source, type) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        cpu = 0.0
        written = 0
        while written < events:
            start = time.process_time()
            batch = []
            main.execute("BEGIN")
            for _ in range(per):
                event_id = "%032x" % random.getrandbits(128)
                ms = T0 + written // 20
                source, kind = ("bench.nomatch", "bench.type") if head else (None, None)
                archived = 1 if variant.startswith(("archive", "both-")) else 0
                cur = main.execute(
                    log_insert, ("bench", "kept", event_id, BODY, ms, archived, source, kind)
                )
                batch.append((cur.lastrowid, event_id, ms))
                written += 1
            if variant == "archive-v6":
                for seq, event_id, ms in batch:
                    main.execute(
                        "INSERT INTO archived (archive, ingested_ms, tenant, bus, event_id, body,"
                        " seq) VALUES (?, ?, ?, ?, ?, X'', ?)",
                        ("bench/kept/all", ms, "bench", "kept", event_id, seq),
                    )
            if variant in ("archive-v7", "both-rows"):
                for seq, event_id, ms in batch:
                    main.execute(
                        "INSERT INTO archive_rows (archive, ingested_ms, pos, seq)"
                        " VALUES (?, ?, ?, ?)",
                        ("bench/kept/all", ms, seq, seq),
                    )
            if variant == "trace-main":
                write_traces(main, batch)
            main.execute("COMMIT")
            if variant in ("trace", "trace-noseq"):
                traces.execute("BEGIN")
                write_traces(traces, batch)
                traces.execute("COMMIT")
            cpu += time.process_time() - start
        main.close()
        traces.close()
        return cpu / events * 1e6


VARIANTS = ["log", "archive-v6", "archive-v7", "trace", "trace-noseq", "trace-main", "head-in-log",
            "head-thin", "both-rows", "both-in-log"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("variants", nargs="*", default=VARIANTS)
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {VARIANTS}")
    figures = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for v in args.variants:
            figures[v].append(run(v, args.events))
    for v in args.variants:
        spread = ", ".join(f"{x:.1f}" for x in figures[v])
        print(f"{v:>12}: {statistics.median(figures[v]):6.2f} µs an event (rounds: {spread})")


if __name__ == "__main__":
    main()
