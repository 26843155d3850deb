"""The object tier: chunks as immutable objects in an S3-compatible bucket shared by all nodes.

    format.py   the object's header, byte by byte, and where a key's object lives
    bucket.py   opening a bucket from its URL, checking it at start, reading its errors
    breaker.py  the circuit breaker that stops calling a store which keeps failing
    tier.py     `ObjectTier`: the `LowerTier` over the bucket (deadlines, retries, verification)
    probe.py    `SharedTierProbe`: how far a locally missing prefix continues in the bucket
"""
