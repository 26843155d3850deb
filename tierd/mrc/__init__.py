"""Hit-rate curves: how the LRU hit ratio grows with capacity, so operators can size tiers.

One module per job, lowest first (each imports only those above it):

    references.py      a request stream flattened into per-chunk arrays, the offline input form
    sampling.py        the SHARDS sampling hash: which keys (and so which references) are sampled
    exact.py           exact LRU stack distances (Mattson), count- or byte-weighted, and prefix
                       distances along a request
    curve.py           distances -> hit ratios -> [capacity, hit_ratio] curves; grids; curve error
    histogram.py       weighted distances in a bounded number of buckets (what SHARDS keeps)
    recency.py         the LRU stack as a Fenwick tree over access times (online distances)
    shards.py          sampled estimates (SHARDS): the online estimator and its offline twin
    advice.py          the capacity past which one more GiB stops paying
    trace_report.py    everything `tierd mrc --trace` reports for a trace
    traces.py          access trace formats (Mooncake JSONL, tierd's Parquet) and their readers
    trace_recorder.py  writes the daemon's lookups as a Parquet access trace
    observer.py        the daemon's live curve (and optional trace), fed by its own lookups

The traces live here because they exist to be turned into curves: `tierd mrc --trace` reads
them, the observer records them, and the benchmarks replay them against the exact curve.

The offline optimum (Belady's MIN, the best any eviction policy could do) belongs beside
exact.py, taking the same `references.References`, with its curve built by curve.py.

Hit ratios are per reference (chunk), in both count and byte mode. Nothing here imports the
store or the daemon at run time (the observer names the store's type for type checking only):
the observer is handed the store it watches.
"""
