"""Prometheus metrics of a running daemon, served over HTTP on `--metrics-port`.

Store counters are read at scrape time from the store itself (on the event loop, so the
numbers are consistent), never kept twice; only RPC latencies are recorded here.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from tierd.daemon.server import Daemon

_GAUGES = {"capacity_bytes": "Capacity of the tier", "used_bytes": "Bytes in use", "chunks": "Chunks stored"}
_COUNTERS = {
    "hits": "Chunk lookups answered by this tier",
    "misses": "Chunk lookups this tier could not answer",
    "bytes_in": "Bytes written into the tier",
    "bytes_out": "Bytes read out of the tier",
    "evictions": "Chunks removed from the tier to make room",
    "demotions": "Chunks written down to the next tier",
    "promotions": "Chunks read up into this tier",
    "corrupt": "Chunks dropped because they failed verification",
}
#: The shared object tier's own figures (present only when it is configured).
_OBJECT_GAUGES = {"upload_queued": "Chunks waiting for upload", "upload_queue_bytes": "Bytes waiting for upload",
                  "upload_inflight": "Uploads in progress"}
_OBJECT_COUNTERS = {
    "puts": "Objects this node uploaded",
    "put_skipped_existing": "Uploads skipped because another node had written the object",
    "upload_dropped": "Queued uploads dropped (queue over its bound)",
    "uploads_lost": "Queued uploads whose local copies were gone before they went out",
    "remote_found": "Chunks found in the bucket by lookups",
    "remote_budget_exceeded": "Lookups that answered at their time budget",
    "corrupt_deleted": "Objects that failed verification and were deleted",
    "errors": "Object-store requests that failed",
    "timeouts": "Object-store requests that timed out",
}
#: The live canary's comparisons, per tier blamed and layout (`tierd.store.verify`).
_CANARY_COUNTERS = {
    "compared": "Chunks the canary compared with recomputed KV",
    "exact": "Compared chunks byte-identical to recomputed KV",
    "within": "Compared chunks that differed from recomputed KV within the bound",
    "diverged": "Compared chunks that diverged from recomputed KV (removed; count toward quarantine)",
}
RPC_BUCKETS = (25e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.2, 1.0, 5.0)


class _StoreCollector:
    def __init__(self, daemon: "Daemon", loop: asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        store = self.daemon.store
        if store is None:
            return

        async def snapshot() -> dict[str, Any]:
            return store.stat()

        stat = asyncio.run_coroutine_threadsafe(snapshot(), self.loop).result(timeout=5)
        for name, doc in _GAUGES.items():
            g = GaugeMetricFamily(f"tierd_tier_{name}", doc, labels=["tier"])
            for t in stat["tiers"]:
                g.add_metric([t["name"]], t[name])
            yield g
        for name, doc in _COUNTERS.items():
            c = CounterMetricFamily(f"tierd_tier_{name}", doc, labels=["tier"])
            for t in stat["tiers"]:
                c.add_metric([t["name"]], t[name])
            yield c
        for name, doc in (("admitted", "Chunks leaving DRAM that the tier's admission filter let in"),
                          ("declined", "Chunks leaving DRAM that the tier's admission filter kept out")):
            c = CounterMetricFamily(f"tierd_tier_admission_{name}", doc, labels=["tier", "filter"])
            for t in stat["tiers"][1:]:
                c.add_metric([t["name"], t["admission"]], t[name])
            yield c
        yield from _canary_metrics(stat)
        yield GaugeMetricFamily("tierd_dram_dirty_bytes", "DRAM bytes not yet written to the tier below",
                                value=stat["tiers"][0]["dirty_bytes"])
        obj = next((t for t in stat["tiers"] if "breaker" in t), None)
        if obj is not None:
            for name, doc in _OBJECT_GAUGES.items():
                yield GaugeMetricFamily(f"tierd_object_{name}", doc, value=obj[name])
            for name, doc in _OBJECT_COUNTERS.items():
                yield CounterMetricFamily(f"tierd_object_{name}", doc, value=obj[name])
            yield GaugeMetricFamily("tierd_object_circuit_open", "1 while the object store is considered down",
                                    value=0 if obj["breaker"] == "closed" else 1)
        yield GaugeMetricFamily("tierd_leases", "Leases held by clients", value=stat["leases"])
        yield GaugeMetricFamily("tierd_sessions", "Connected clients", value=stat["sessions"])
        yield CounterMetricFamily("tierd_refused_connections", "Connections refused by the peer-credential check",
                                  value=self.daemon.refused)
        dispatcher = self.daemon.dispatcher
        yield CounterMetricFamily("tierd_namespace_denied",
                                  "Requests refused for reaching outside their connection's namespace",
                                  value=dispatcher.denied if dispatcher is not None else 0)


def _canary_metrics(stat: dict[str, Any]) -> Iterator[Metric]:
    canary = stat["canary"]["by_tier"]
    for name, doc in _CANARY_COUNTERS.items():
        c = CounterMetricFamily(f"tierd_canary_{name}", doc, labels=["tier", "layout"])
        for tier, layouts in canary.items():
            for layout_id, counts in layouts.items():
                c.add_metric([tier, layout_id], counts[name])
        yield c
    g = GaugeMetricFamily("tierd_canary_max_error", "Largest relative error the canary saw (-1: infinite)",
                          labels=["tier", "layout"])
    for tier, layouts in canary.items():
        for layout_id, counts in layouts.items():
            g.add_metric([tier, layout_id], counts["max_error"])
    yield g
    q = GaugeMetricFamily("tierd_tier_quarantined", "1 while the tier is quarantined (its chunks are not served)",
                          labels=["tier"])
    for t in stat["tiers"]:
        q.add_metric([t["name"]], 1 if t["quarantined"] else 0)
    yield q


def start_metrics(daemon: "Daemon", host: str, port: int) -> int:
    """Start the HTTP exporter in a thread; returns the bound port (useful when `port` is 0)."""
    registry = CollectorRegistry()
    registry.register(_StoreCollector(daemon, asyncio.get_running_loop()))
    latency = Histogram("tierd_rpc_seconds", "RPC handling time by op", ["op"], registry=registry, buckets=RPC_BUCKETS)
    errors = Counter("tierd_rpc_errors", "RPCs answered with an error, by op", ["op"], registry=registry)

    def observe(op: str, seconds: float, ok: bool) -> None:
        latency.labels(op).observe(seconds)
        if not ok:
            errors.labels(op).inc()

    assert daemon.dispatcher is not None
    daemon.dispatcher.observe = observe
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
