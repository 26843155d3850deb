"""Tiers of the store: the shared-memory DRAM arena and the lower tiers (NVMe directory, object store)."""
