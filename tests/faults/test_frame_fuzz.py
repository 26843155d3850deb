"""Hostile frames at a live daemon (hypothesis; bench/faults.py sends 10,000): the daemon stays
alive, the stored chunks stay byte-identical, nothing stays held, and every frame that can be
answered is answered; a known, still open bug would be pinned by a strict xfail below (none is).
Below, one probe for each bug the fuzzing found."""
from __future__ import annotations

import shutil
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.faults.counts import fault_count
from tests.faults.frame_fuzz import (
    REPLY_TIMEOUT,
    FuzzReport,
    deeply_nested,
    encode,
    reply_problem,
    run_frame_fuzz,
)
from tests.faults.workload import FAULTS, daemon_args, prompt_keys
from tierd.client import Client
from tierd.daemon.launch import DaemonProcess
from tierd.rpc import frames

pytestmark = pytest.mark.faults

EXAMPLES = fault_count(2000, ci=600)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> FuzzReport:
    return run_frame_fuzz(tmp_path_factory.mktemp("fuzz"), EXAMPLES, seed=20_13)


def test_daemon_survives_and_stored_chunks_are_unchanged(report: FuzzReport) -> None:
    assert report.frames >= EXAMPLES
    assert report.daemon_alive
    assert report.known_intact == report.known_chunks == 24
    assert report.stray_chunks == 0  # only the known chunks, plus any the fuzzer committed itself
    assert report.chunks_after == report.chunks_before + report.fuzz_committed


def test_nothing_is_held_once_the_connections_close(report: FuzzReport) -> None:
    assert report.reservations_after == 0 and report.leases_after == 0


def test_every_answerable_frame_is_answered_well(report: FuzzReport) -> None:
    assert report.malformed_replies == []
    assert report.unexplained == []
    assert report.slowest_reply_s < REPLY_TIMEOUT


def test_the_frames_reached_past_the_parser(report: FuzzReport) -> None:
    """The fuzzer is not just bouncing off the frame decoder: requests reached argument checks,
    the store, and some were valid."""
    codes = report.replies_error
    assert codes["ProtocolError"] > 0 and codes["InvalidArgumentError"] > 0
    assert codes["UnknownLayoutError"] + codes["NotFoundError"] + codes["NotReservedError"] \
        + codes["LayoutMismatchError"] + codes["AlreadyStoredError"] > 0
    assert report.replies_ok > 0 and report.raw_streams > 0 and report.connections > 4


# ------------------------------------------------------------------ one probe per bug found


@pytest.fixture(scope="module")
def probe_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    sockdir = Path(tempfile.mkdtemp(prefix="tdp-", dir="/tmp"))
    d = DaemonProcess(sockdir / "p.sock", daemon_args(None, dram="8MiB"),
                      log_path=tmp_path_factory.mktemp("probe") / "daemon.log").start()
    try:
        with Client.connect(d.socket, map_arena=False) as c:
            c.register_layout(FAULTS)  # so that plans get past the layout check
        yield d
    finally:
        d.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def _ask(daemon: DaemonProcess, body: bytes) -> Any:
    """One frame (`body` is its msgpack) on a fresh connection; the reply, or None if the daemon
    hung up without one."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(REPLY_TIMEOUT)
    s.connect(daemon.socket)
    try:
        s.sendall(struct.pack(">I", len(body)) + body)
        return frames.recv_frame(s)
    except ConnectionError:
        return None
    finally:
        s.close()


def test_nil_frame_gets_an_error_reply(probe_daemon: DaemonProcess) -> None:
    """Was: read_frame returned None for a nil body, which the server took for the end of the
    stream, hanging up without a word (fixed in tierd/rpc/frames.py)."""
    reply = _ask(probe_daemon, b"\xc0")
    assert reply is not None and reply["error"]["code"] == "ProtocolError"
    assert "nil" in reply["error"]["message"]


@pytest.mark.parametrize("request_", [
    {"id": 1, "op": "ping", "a": 1, b"b": 2},
    {"id": 1, "op": "register_layout", "layout": {**FAULTS.to_dict(), "x": 1, b"y": 2}},
], ids=["arguments", "layout-fields"])
def test_text_and_binary_names_get_an_error_reply(probe_daemon: DaemonProcess, request_: dict) -> None:
    """Was: the unknown names were sorted for the message, and str with bytes raised TypeError
    in the handler, so the connection dropped without a reply."""
    reply = _ask(probe_daemon, encode(request_))
    assert reply is not None and reply_problem(reply, request_) == ""
    assert reply["error"]["code"] == "InvalidArgumentError"


@pytest.mark.parametrize("field", ["id", "op", "layout"])
def test_a_value_nested_1000_deep_gets_an_error_reply(probe_daemon: DaemonProcess, field: str) -> None:
    """Was: repr() of the bad value in the error message raised RecursionError (msgpack decodes
    up to ~1024 levels, Python's repr stops at ~1000), so the connection dropped."""
    request_ = {"id": 1, "op": "register_layout" if field == "layout" else "ping",
                field: deeply_nested(1000, "list", b"\xc0")}
    reply = _ask(probe_daemon, encode(request_))
    assert reply is not None and reply["ok"] is False
    assert reply["error"]["code"] in ("ProtocolError", "InvalidArgumentError")


def test_a_lookup_with_a_plan_gets_a_reply(probe_daemon: DaemonProcess) -> None:
    """Was (919c053 to 1a92894): _plan read `names` before a local of that name was assigned,
    UnboundLocalError on every lookup with a plan, and the connection dropped."""
    request_ = {"id": 7, "op": "lookup", "keys": prompt_keys(1, 0),
                "plan": {"layout_id": FAULTS.layout_id, "prompt_tokens": 1024}}
    reply = _ask(probe_daemon, encode(request_))
    assert reply is not None and reply_problem(reply, request_) == ""


@pytest.mark.parametrize("where", ["layout.model", "layout.dtype", "plan.shape", "plan.device", "plan.layout_id"])
def test_a_value_nested_1000_deep_in_a_layout_or_plan_gets_an_error_reply(probe_daemon: DaemonProcess,
                                                                          where: str) -> None:
    deep = deeply_nested(990, "list", b"\xc0")
    part, field = where.split(".")
    if part == "layout":
        request_: dict = {"id": 1, "op": "register_layout", "layout": {**FAULTS.to_dict(), field: deep}}
    else:
        plan = {"layout_id": FAULTS.layout_id, "prompt_tokens": 1024, field: deep}
        request_ = {"id": 1, "op": "lookup", "keys": prompt_keys(1, 0), "plan": plan}
    reply = _ask(probe_daemon, encode(request_))
    assert reply is not None and reply["ok"] is False, reply


def test_mrc_with_a_capacity_near_2_64_gets_a_reply(probe_daemon: DaemonProcess) -> None:
    request_ = {"id": 3, "op": "mrc", "grid": [2**64 - 2]}  # found by bench/faults.py's 10,000 frames
    reply = _ask(probe_daemon, encode(request_))
    assert reply is not None and reply_problem(reply, request_) == ""
