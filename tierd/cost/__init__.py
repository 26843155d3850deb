"""The cost model: is loading a cached prefix from a tier faster than recomputing it?

Pure computation that the daemon and the CLI use; each module one part of the answer:

    plan.py       where the model decides: `CostModel` (plan a lookup, admit a chunk, break-even)
    shape.py      a model's shape: prefill FLOPs and KV bytes (the recompute side's work)
    device.py     the device's prefill speed, declared or learned (the recompute side's clock)
    tiers.py      a tier's read cost, latency + bytes / bandwidth (the load side), declared values
    fit.py        the online line fit that tiers and devices learn with
    calibrate.py  measuring the tiers at start-up (and a codec's ratio and decode speed)
    models.py     one model per layout: what each engine declared and what its prefills taught
    admission.py  the store's admission rule, judged by the model of each chunk's layout
    checks.py     argument checks shared by the above

Nothing is re-exported here: each name has one import path, `tierd.cost.<module>`.
"""
