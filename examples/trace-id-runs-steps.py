"""What one maintenance step of the trace-id runs costs (`host/src/store/sqlite/trace_id_runs.rs`).

Builds eight sorted runs of 262,144 random 48-bit keys (a tier's worth of
merges) in a WAL file with an 8 MB cache like the store's, then compacts
them into one run a slice of the key space per transaction, ~65,536 keys a
step, with the statement the store uses; then deletes the eight old runs a
step at a time, as retired runs are. Prints each phase's median and largest
step and its cost a key. A step holds the traces' writer while it runs, so
its length is what a trace record or lookup may wait.

Run: `python3 examples/trace-id-runs-steps.py` (about a minute).
"""
import sqlite3, random, time, os, tempfile
random.seed(1)
d=tempfile.mkdtemp(); c=sqlite3.connect(os.path.join(d,'t.db'), isolation_level=None)
c.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-8192;")
c.execute("CREATE TABLE runs (run INTEGER PRIMARY KEY, into_run INTEGER)")
c.execute("CREATE TABLE keys (run INTEGER, key INTEGER, trace INTEGER, PRIMARY KEY(run,key,trace)) WITHOUT ROWID")
M=262144; n=0
for r in range(1,9):
    ks=sorted((random.getrandbits(48), n+i) for i in range(M)); n+=M
    c.execute("BEGIN"); c.executemany("INSERT INTO keys VALUES (?,?,?)", ((r,k,v) for k,v in ks)); c.execute("INSERT INTO runs VALUES (?,9)",(r,)); c.execute("COMMIT")
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
slices=(8*M+65535)//65536; width=-(-(1<<48)//slices)
ts=[]
for s in range(slices):
    lo=s*width; hi=min(lo+width,1<<48)
    t=time.perf_counter(); c.execute("BEGIN")
    c.execute("INSERT OR IGNORE INTO keys (run,key,trace) SELECT 9, k.key, k.trace FROM runs r CROSS JOIN keys k WHERE r.into_run = 9 AND k.run = r.run AND k.key >= ? AND k.key < ? AND k.trace >= 0 ORDER BY k.key, k.trace",(lo,hi))
    c.execute("COMMIT"); ts.append(time.perf_counter()-t)
ts.sort(); print(f"compaction of 8 x {M} keys in {slices} steps: step median {ts[len(ts)//2]*1e3:.1f} ms, max {ts[-1]*1e3:.1f} ms, {sum(ts)/(8*M)*1e6:.2f} µs a key")
ds=[]
for r in range(1,9):
    while True:
        t=time.perf_counter(); c.execute("BEGIN")
        b=c.execute("SELECT key FROM keys WHERE run=? ORDER BY key LIMIT 1 OFFSET 65535",(r,)).fetchone()
        if b: c.execute("DELETE FROM keys WHERE run=? AND key<=?",(r,b[0]))
        else: c.execute("DELETE FROM keys WHERE run=?",(r,))
        c.execute("COMMIT"); ds.append(time.perf_counter()-t)
        if not b: break
ds.sort(); print(f"deleting the 8 runs: step median {ds[len(ds)//2]*1e3:.1f} ms, max {ds[-1]*1e3:.1f} ms, {sum(ds)/(8*M)*1e6:.2f} µs a key")
