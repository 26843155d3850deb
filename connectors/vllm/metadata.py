"""What the scheduler side tells the worker side each step, and what the worker tells back
(both pickled across processes)."""
from __future__ import annotations

from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata, KVConnectorWorkerMetadata


@dataclass(slots=True)
class LoadSpec:
    """Scatter tokens [start, end) of a request from tierd chunks into its blocks."""

    req_id: str
    keys: list[bytes]  # chunks first_chunk .. covering [start, end)
    first_chunk: int
    start: int  # block aligned
    end: int  # block aligned
    block_ids: list[int]  # the request's blocks from token 0


@dataclass(slots=True)
class SaveSpec:
    """Gather whole chunks first_chunk .. of a request from its blocks into tierd."""

    req_id: str
    keys: list[bytes]
    first_chunk: int
    block_ids: list[int]  # the request's blocks from token 0, covering every chunk saved
    save_id: int = 0  # the scheduler's handle: reported back when the save has ended
    #: The saved chunks' token ids, one after the other, and the key of the chunk before the
    #: first (None at the prompt's start): the daemon's KV events carry them, for routers.
    tokens: list[int] | None = None
    parent: bytes | None = None


@dataclass
class TierdConnectorMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)
    #: (start, end) when this step is one request prefilling tokens [start, end) and nothing
    #: else: the worker times it, and the daemon learns the device's prefill throughput.
    prefill: tuple[int, int] | None = None
    #: Finished requests whose blocks vLLM keeps until the worker reports their saves done.
    held: list[str] = field(default_factory=list)
    #: Requests preempted this step: their saves must end before their blocks are reused.
    preempted: list[str] = field(default_factory=list)


@dataclass
class TierdWorkerMetadata(KVConnectorWorkerMetadata):
    #: Save ids that ended (stored, or failed and dropped) since the worker last reported.
    saves_ended: list[int] = field(default_factory=list)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> "TierdWorkerMetadata":
        assert isinstance(other, TierdWorkerMetadata)
        return TierdWorkerMetadata(self.saves_ended + other.saves_ended)
