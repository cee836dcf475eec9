"""What a merge of trace ids costs a key, by table size and merge size.

Until session 18, `host/src/store/sqlite/trace_ids.rs` merged the recent
trace ids, in key order, into one B-tree of random 48-bit keys. Random keys
soon fall in every leaf page, so a merge rewrote about the whole table: the
cost per key was the table's size over the merge's. Since then each merge
writes a sorted run of its own (`trace_id_runs.rs`). This measures both with Python's
`sqlite3` (WAL, `synchronous=NORMAL`, an 8 MB cache like the store's) for a
few table and merge sizes, against keys appended as sorted runs (the shape
of an LSM tree: each merge a run of its own, cost independent of the table).

Run: `python3 examples/trace-ids-merge.py` (a few minutes). Figures are
medians of 3 merges, µs a key, Python's own loop included (~1.2 µs).
"""
import sqlite3, random, time, os, sys, tempfile
random.seed(1)
def run(tree, M, lsm=False):
    d=tempfile.mkdtemp(); p=os.path.join(d,'t.db')
    c=sqlite3.connect(p, isolation_level=None)
    c.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-8192;")
    if lsm:
        c.execute("CREATE TABLE ids (run INTEGER, key INTEGER, trace INTEGER, PRIMARY KEY(run,key,trace)) WITHOUT ROWID")
    else:
        c.execute("CREATE TABLE ids (key INTEGER, trace INTEGER, PRIMARY KEY(key,trace)) WITHOUT ROWID")
    n=0; run_no=0
    def merge(m):
        nonlocal n, run_no
        keys=sorted((random.getrandbits(48), n+i) for i in range(m)); n+=m; run_no+=1
        t=time.perf_counter(); c.execute("BEGIN")
        if lsm: c.executemany("INSERT INTO ids VALUES (?,?,?)", ((run_no,k,v) for k,v in keys))
        else: c.executemany("INSERT OR IGNORE INTO ids VALUES (?,?)", keys)
        c.execute("COMMIT"); c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return time.perf_counter()-t
    while n < tree: merge(min(M, tree-n))
    ts=[merge(M)*1e6/M for _ in range(3)]
    ts.sort(); return ts[1]
for tree in [250_000, 1_000_000, 3_000_000]:
    for M in [65536, 262144]:
        print(f"tree {tree:>9} merge {M:>6}: btree {run(tree,M):.2f} µs/key, runs {run(tree,M,True):.2f} µs/key", flush=True)
