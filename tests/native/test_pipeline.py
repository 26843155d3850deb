"""The device pipelines (native/pipeline.py) and the device interface they are written against
(native/device*.py), executed on this machine through the CPU implementation and, wherever
torch sees a GPU, through CUDA (those cases skip with the reason elsewhere).

The CPU implementation defers side-stream work until the host needs it, so these tests see
exactly which copies a wait makes happen: a missing or misplaced wait shows as stale bytes,
not as a race that passes most of the time."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from native import block_runs, concat, copier
from native.backend import TorchCopier
from native.device import DeviceFault, for_device
from native.device_cpu import CpuDevice
from native.pinned import PinnedRanges
from native.pipeline import LayerwiseScatter, StagedGather
from tests.devices import WHERE
from tests.native.layouts import build


class Counting:
    """A copier that counts what the pipeline asks of it (and can fault on one layer)."""

    def __init__(self, inner, fault_layer: int | None = None) -> None:
        self.inner, self.cache, self.backend = inner, inner.cache, inner.backend
        self.reaches_host = inner.reaches_host
        self.fault_layer = fault_layer
        self.prepared = 0
        self.launched: list[range | None] = []

    def prepare(self, runs, chunks, *, gather):
        self.prepared += 1
        return self.inner.prepare(runs, chunks, gather=gather)

    def launch(self, p, layers=None):
        self.launched.append(layers)
        if self.fault_layer is not None and (layers is None or self.fault_layer in layers):
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        self.inner.launch(p, layers)


def _setup(where: str, kind: str = "gpu_LBNHC", L: int = 4):
    H, D, bs, nb, T = 2, 64, 16, 12, 32
    src = build(kind, L, H, D, bs, nb, torch.bfloat16, torch.Generator().manual_seed(1), device=where)
    dst = build(kind, L, H, D, bs, nb, torch.bfloat16, torch.Generator().manual_seed(2), device=where)
    per_chunk = L * src.cache.kv_factor * T * H * D * 2
    return src, dst, per_chunk, bs, nb, T


def _slots(per_chunk: int, n: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    arena = np.zeros(n * per_chunk, dtype=np.uint8)  # stands in for the shared-memory arena
    return arena, [arena[i * per_chunk:(i + 1) * per_chunk] for i in range(n)]


@pytest.mark.parametrize("kind", ["gpu_LBNHC", "mla", "cpu_one_buffer"])
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "staged"])
@pytest.mark.parametrize("where", WHERE)
def test_staged_gather_and_layerwise_scatter_match_the_reference(where, pinned, kind):
    """Fails on the code before issue 23 for MLA: the staging buffers held 2x an MLA chunk."""
    src, dst, per_chunk, bs, nb, T = _setup(where, kind)
    device = for_device(src.cache.device)
    arena, slots = _slots(per_chunk)
    pin = device.pin(arena) if pinned else None
    assert (pin is not None) == pinned and device.is_pinned(slots[1]) == pinned
    try:
        runs = [block_runs([3 * i, 3 * i + 1], bs) for i in range(3)]
        staged = StagedGather(copier(src.cache), device, T)
        assert staged.chunk_bytes == per_chunk
        staged.submit(runs, slots, after=device.current().record()).synchronize()
        for i, slot in enumerate(slots):
            want = torch.zeros(per_chunk, dtype=torch.uint8, device=where)
            TorchCopier(src.cache).gather(runs[i], [want])
            assert np.array_equal(slot, want.cpu().numpy())
        loader = LayerwiseScatter(copier(dst.cache), device)
        scatter_runs = concat(*(block_runs([10 - i], bs, chunk=i, num_tokens=bs) for i in range(3)))
        chunks = slots if pinned else [torch.from_numpy(s).to(where) for s in slots]
        loader.start(chunks, scatter_runs)
        for layer in range(src.cache.num_layers):
            loader.wait_layer(layer)
        loader.wait_all()
        ref = build(kind, src.cache.num_layers, 2, 64, bs, nb, torch.bfloat16, torch.Generator().manual_seed(2),
                    device=where)
        TorchCopier(ref.cache).scatter([torch.from_numpy(s).to(where) for s in slots], scatter_runs)
        for a, b in zip(ref.storages, dst.storages):
            assert torch.equal(a, b)
    finally:
        if pin is not None:
            pin.unpin()


def test_a_layerwise_load_checks_its_batch_once_and_launches_once_per_layer():
    """Fails on the code before issue 23: each layer's launch checked and described the whole
    batch again (no `prepare`; L full copier calls)."""
    src, dst, per_chunk, bs, nb, T = _setup("cpu", L=6)
    counting = Counting(copier(dst.cache))
    loader = LayerwiseScatter(counting, CpuDevice())  # type: ignore[arg-type]
    _, slots = _slots(per_chunk, 2)
    loader.start(slots, concat(*(block_runs([i], bs, chunk=i, num_tokens=bs) for i in range(2))))
    assert counting.prepared == 1
    assert counting.launched == []  # queued, not run: nothing waited for it yet
    assert len(loader._events) == 6 and loader.stream.pending == 6 * 2  # one launch and one event per layer
    loader.wait_all()
    assert counting.launched == [range(i, i + 1) for i in range(6)]


def test_wait_layer_brings_in_that_layer_and_no_later_one():
    src, dst, per_chunk, bs, nb, T = _setup("cpu")
    device = CpuDevice()
    _, slots = _slots(per_chunk, 1)
    slots[0][:] = np.random.default_rng(0).integers(1, 255, per_chunk, dtype=np.uint8)
    counting = Counting(copier(dst.cache))
    loader = LayerwiseScatter(counting, device)  # type: ignore[arg-type]
    loader.start(slots, block_runs([5, 6], bs, chunk=0))
    loader.wait_layer(1)
    assert counting.launched == [range(0, 1), range(1, 2)]  # the forward waits for layers 0..1 only
    loader.wait_all()
    assert len(counting.launched) == 4


def test_a_replayed_graph_that_skips_the_layer_waits_still_reads_a_whole_load_when_not_layerwise():
    """A full CUDA graph replay runs no Python, so `wait_for_layer_load` is never called. With
    layer-wise waits the forward would read blocks still being copied (shown: nothing copied
    when the forward starts); `layerwise=False` makes the compute stream wait for the whole load
    in `start`, before any of the forward's kernels."""
    for layerwise, copied_before_forward in ((True, 0), (False, 4)):
        src, dst, per_chunk, bs, nb, T = _setup("cpu")
        _, slots = _slots(per_chunk, 1)
        counting = Counting(copier(dst.cache))
        loader = LayerwiseScatter(counting, CpuDevice(), layerwise=layerwise)  # type: ignore[arg-type]
        loader.start(slots, block_runs([5, 6], bs, chunk=0))
        assert len(counting.launched) == copied_before_forward  # what the forward pass would see now
        loader.wait_all()
        assert len(counting.launched) == 4


def test_a_copy_that_faults_surfaces_where_the_host_waits_and_stops_the_stream():
    src, dst, per_chunk, bs, nb, T = _setup("cpu")
    _, slots = _slots(per_chunk, 1)
    counting = Counting(copier(dst.cache), fault_layer=2)
    loader = LayerwiseScatter(counting, CpuDevice())  # type: ignore[arg-type]
    loader.start(slots, block_runs([5, 6], bs, chunk=0))
    loader.wait_layer(1)  # layers before the fault are fine
    with pytest.raises(DeviceFault, match="illegal memory access"):
        loader.wait_all()
    assert counting.launched == [range(0, 1), range(1, 2), range(2, 3)]  # layer 3 never ran
    with pytest.raises(DeviceFault):
        loader.stream.synchronize()  # sticky, as a CUDA context after a fault


def test_cpu_streams_run_in_issue_order_across_waits():
    device = CpuDevice()
    a, b = device.stream(), device.stream()
    seen: list[str] = []
    a.run(lambda: seen.append("a1"))
    first = a.record()
    a.run(lambda: seen.append("a2"))
    b.wait(first)
    b.run(lambda: seen.append("b1"))
    assert seen == [] and not first.query()
    b.synchronize()
    assert seen == ["a1", "b1"] and first.query()  # b drove a up to the event, not past it
    device.current().wait_stream(a)
    assert seen == ["a1", "b1", "a2"]
    device.current().run(lambda: seen.append("now"))  # the current stream is the host: at once
    assert seen[-1] == "now"


def test_pins_are_counted_per_range_and_registered_once():
    """Fails on the code before issue 23: every connection registered the whole arena again."""
    table, calls = PinnedRanges(), []
    reg = lambda a, n: calls.append(("register", a, n)) or True  # noqa: E731
    unreg = lambda a, n: calls.append(("unregister", a, n))  # noqa: E731
    first, second = table.pin(4096, 100, reg, unreg), table.pin(4096, 100, reg, unreg)
    assert first is not None and second is not None and table.registrations == 1
    assert table.covers(4100, 96) and not table.covers(4100, 97) and not table.covers(0, 1)
    first.unpin()
    first.unpin()  # idempotent: one holder lets go once
    assert calls == [("register", 4096, 100)] and table.covers(4096, 100)
    second.unpin()
    assert calls[-1] == ("unregister", 4096, 100) and len(table) == 0
    asked: list[int] = []
    refuse = lambda a, n: asked.append(a) and False  # noqa: E731
    assert table.pin(8192, 10, refuse, unreg) is None and len(table) == 0  # refused: staged
    assert table.pin(8192, 10, refuse, unreg) is None and asked == [8192]  # and not asked again


def test_cuda_registration_is_refused_when_the_device_addresses_it_elsewhere(monkeypatch):
    """The kernels address a registered arena by its host address; a device pointer that differs
    must unregister it (copies stage instead), not be assumed equal. Mock: no CUDA runtime can
    run here, so torch's cudart and the device-pointer query are replaced (the CUDA calls
    themselves run in the GPU cases)."""
    import native.device_cuda as dc

    calls: list[str] = []

    class FakeCudart:
        def cudaHostRegister(self, address, nbytes, flags):
            calls.append("register")
            return 0

        def cudaHostUnregister(self, address):
            calls.append("unregister")
            return 0

    monkeypatch.setattr(torch.cuda, "cudart", lambda: FakeCudart())
    monkeypatch.setattr(dc, "PINNED", PinnedRanges())
    arena = np.zeros(4096, dtype=np.uint8)
    monkeypatch.setattr(dc, "device_pointer", lambda address: address + 4096)
    assert dc.CudaDevice(torch.device("cuda", 0)).pin(arena) is None
    assert calls == ["register", "unregister"]
    assert dc.CudaDevice(torch.device("cuda", 0)).pin(arena) is None and len(calls) == 2  # refused once: not asked again
    monkeypatch.setattr(dc, "device_pointer", lambda address: address)
    other = np.zeros(4096, dtype=np.uint8)  # (the refused one stays alive: another address)
    pin = dc.CudaDevice(torch.device("cuda", 0)).pin(other)
    assert pin is not None and dc.CudaDevice(torch.device("cuda", 0)).is_pinned(other[10:20])
    pin.unpin()
    assert calls == ["register", "unregister", "register", "unregister"]


def test_lookups_do_not_wait_for_a_registration():
    """Registering pins every page (seconds for a large arena); every load asks `covers`. Before
    the fix the table's lock was held across the registration, so the lookup below waited for it
    (and saw the range registered, after the 10 s timeout)."""
    table = PinnedRanges()
    started, go = threading.Event(), threading.Event()

    def slow_register(address: int, nbytes: int) -> bool:
        started.set()
        go.wait(10)
        return True

    t = threading.Thread(target=table.pin, args=(4096, 100, slow_register, lambda a, n: None))
    t.start()
    assert started.wait(10)
    assert table.covers(4096, 10) is False  # answered while the registration runs
    go.set()
    t.join(10)
    assert table.covers(4096, 10) and table.registrations == 1
