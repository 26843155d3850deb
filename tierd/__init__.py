"""tierd: a tiered KV-cache store (shared-memory DRAM, NVMe, object store) for LLM serving."""
from __future__ import annotations

__version__ = "0.1.0"
