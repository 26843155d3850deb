"""The NVMe tier: one checksummed file per chunk in a local directory.

    format.py   the chunk file's name and header, byte by byte (no I/O)
    aligned.py  whole-block transfers that O_DIRECT accepts, per-thread aligned buffers
    files.py    `NvmeChunkFiles`: the blocking write / verified read / delete / scan of files
    tier.py     `NvmeTier`: the `LowerTier` the store awaits, running the files' I/O on its threads
"""
