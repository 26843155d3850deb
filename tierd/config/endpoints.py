"""The KV-event options' parsers: ZMQ endpoints the daemon binds, and the replay buffer's size.

`--kv-events tcp://127.0.0.1:5557` turns publishing on (`tierd.events`); `--kv-events-replay`
adds the replay socket; `--kv-events-buffer` bounds what replay can send. The daemon *binds*
both endpoints (routers connect to it), so a host is an address of this machine (or `*` for
every interface), and port 0 lets the system pick one: the ready line and `tierd stat` say
which. `ipc:///path` endpoints work too. How the two endpoints relate (a replay socket needs a
publisher, and not on the same endpoint) is `check_kv_events`, which `Config` applies.
"""
from __future__ import annotations

import re

from tierd.config.parsers import is_off
from tierd.errors import ConfigError
from tierd.sizes import GiB, KiB, parse_size

_ENDPOINT_HINT = "use tcp://HOST:PORT to bind, like tcp://127.0.0.1:5557 (port 0: a free one), or ipc:///path"
_TCP = re.compile(r"tcp://(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):([0-9]{1,5})", re.ASCII)


def parse_zmq_endpoint(value: object, where: str, base: str | None) -> str | None:
    """A ZMQ endpoint to bind ("off"/"none"/"": none)."""
    if is_off(value):
        return None
    text = value.strip() if isinstance(value, str) else None
    if text is not None and text.startswith("ipc://"):
        if len(text) > len("ipc://") and not any(c.isspace() for c in text):
            return text
        raise ConfigError(f"{where}={value!r}: an ipc endpoint needs a path, like ipc:///run/tierd/events; "
                          f"{_ENDPOINT_HINT}")
    m = _TCP.fullmatch(text or "")
    if m is None:
        raise ConfigError(f"{where}={value!r}: {_ENDPOINT_HINT}")
    if int(m[2]) > 65535:
        raise ConfigError(f"{where}={value!r}: port {m[2]} is out of range; {_ENDPOINT_HINT}")
    return text


def parse_replay_buffer(value: object, where: str, base: str | None) -> int:
    """Bytes of published batches kept for replay: 64KiB to 16GiB."""
    n = parse_size(value, key=where)  # type: ignore[arg-type]
    if not 64 * KiB <= n <= 16 * GiB:
        raise ConfigError(f"{where}={value!r}: use a size from 64KiB to 16GiB, like 64MiB")
    return n


def check_kv_events(events: str | None, replay: str | None) -> None:
    """The rule across the two endpoints: a replay socket serves a publisher's batches, on an
    endpoint of its own."""
    if replay is None:
        return
    if events is None:
        raise ConfigError(f"kv_events_replay={replay!r} needs kv_events (the publisher whose batches it "
                          f"replays); set --kv-events tcp://HOST:PORT too, or leave --kv-events-replay out")
    if replay == events and not replay.endswith(":0"):  # (port 0: each socket gets a free port of its own)
        raise ConfigError(f"kv_events_replay={replay!r} is the same endpoint as kv_events; give the replay "
                          f"socket a port of its own")
