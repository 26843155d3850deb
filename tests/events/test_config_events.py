"""The KV-event options (`--kv-events`, `--kv-events-replay`, `--kv-events-buffer`): good values
from every source, bad ones refused with the key named and what to write instead, and a daemon
that cannot bind its endpoint stopping at start with one line."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from tierd.config import Config, add_serve_arguments, load_config
from tierd.errors import ConfigError
from tierd.sizes import MiB


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path), "TIERD_DRAM": "64MiB",
            "TIERD_NVME": "0"}


def load(env: dict[str, str], argv: list[str] = (), file: Path | None = None) -> Config:
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    return load_config(p.parse_args([*([f"--config={file}"] if file else []), *argv]), env=env)


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5557", "tcp://*:0", "tcp://[::1]:6000", "tcp://localhost:65535",
                                      "ipc:///tmp/tierd-events"])
def test_good_endpoints_are_accepted(base_env, endpoint):
    config = load(base_env, ["--kv-events", endpoint])
    assert config.kv_events == endpoint and config.kv_events_replay is None and config.kv_events_buffer == 64 * MiB


def test_off_by_default_and_every_source_sets_it(base_env, tmp_path):
    assert load(base_env).kv_events is None
    file = tmp_path / "tierd.toml"
    file.write_text('kv_events = "tcp://127.0.0.1:7001"\nkv_events_buffer = "1MiB"\n')
    assert (load(base_env, file=file).kv_events, load(base_env, file=file).kv_events_buffer) == ("tcp://127.0.0.1:7001", MiB)
    env = {**base_env, "TIERD_KV_EVENTS": "tcp://127.0.0.1:7002", "TIERD_KV_EVENTS_REPLAY": "tcp://127.0.0.1:7003"}
    assert (load(env).kv_events, load(env).kv_events_replay) == ("tcp://127.0.0.1:7002", "tcp://127.0.0.1:7003")
    assert load(env, ["--kv-events", "off", "--kv-events-replay", "none"]).kv_events is None  # a flag turns it off


BAD = [
    ("kv_events", "127.0.0.1:5557"), ("kv_events", "tcp://127.0.0.1"), ("kv_events", "tcp://127.0.0.1:70000"),
    ("kv_events", "udp://127.0.0.1:5557"), ("kv_events", "tcp://a b:1"), ("kv_events", "ipc://"),
    ("kv_events", "tcp://:5557"), ("kv_events_replay", "5558"), ("kv_events_buffer", "1KiB"),
    ("kv_events_buffer", "lots"), ("kv_events_buffer", "32GiB"),
]


@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v}" for n, v in BAD])
@pytest.mark.parametrize("source", ["flag", "env"])
def test_bad_values_name_the_key_and_say_what_to_write(base_env, source, name, value):
    flag, var = "--" + name.replace("_", "-"), "TIERD_" + name.upper()
    with pytest.raises(ConfigError) as info:
        if source == "flag":
            load(base_env, [f"{flag}={value}", "--kv-events", "tcp://127.0.0.1:0"] if name != "kv_events"
                 else [f"{flag}={value}"])
        else:
            load({**base_env, var: value, **({"TIERD_KV_EVENTS": "tcp://127.0.0.1:0"} if name != "kv_events" else {})})
    message = str(info.value)
    assert (f"{flag}=" if source == "flag" else f"{var}=") in message and repr(value) in message
    assert "like" in message  # the fix: an example of a good value


def test_a_replay_socket_needs_a_publisher_on_another_endpoint(base_env):
    with pytest.raises(ConfigError, match="needs kv_events"):
        load(base_env, ["--kv-events-replay", "tcp://127.0.0.1:5558"])
    with pytest.raises(ConfigError, match="same endpoint"):
        load(base_env, ["--kv-events", "tcp://127.0.0.1:5557", "--kv-events-replay", "tcp://127.0.0.1:5557"])
    both_free = load(base_env, ["--kv-events", "tcp://127.0.0.1:0", "--kv-events-replay", "tcp://127.0.0.1:0"])
    assert both_free.kv_events_replay == "tcp://127.0.0.1:0"  # port 0: each gets its own
    with pytest.raises(ConfigError, match="needs kv_events"):  # Config checks it too (embedded mode)
        Config(socket="/tmp/x.sock", dram=64 * MiB, nvme_dir="/tmp/x", nvme=0, kv_events_replay="tcp://127.0.0.1:1")


def test_a_daemon_whose_endpoint_is_taken_stops_at_start_with_one_line(short_dir, tmp_path):
    """The port is bound at start, not on the first event: a taken one is an error then."""
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PUB)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    try:
        proc = subprocess.run([sys.executable, "-m", "tierd", "serve", "--socket", str(short_dir / "d.sock"),
                               "--dram", "16MiB", "--nvme", "0", "--nvme-dir", str(tmp_path / "n"), "--no-calibrate",
                               "--kv-events", f"tcp://127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60)
    finally:
        holder.close(linger=0)
        ctx.term()
    assert proc.returncode != 0
    assert f"--kv-events='tcp://127.0.0.1:{port}': cannot bind it" in proc.stderr
    assert "Traceback" not in proc.stderr and not (short_dir / "d.sock").exists()


def test_pyzmq_is_declared_so_kv_events_work_on_a_clean_install():
    """The publisher imports zmq when --kv-events is set: tierd itself must require it."""
    import ast
    import re

    setup_py = Path(__file__).resolve().parents[2] / "setup.py"
    calls = [n for n in ast.walk(ast.parse(setup_py.read_text())) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "setup"]
    (requires,) = [ast.literal_eval(k.value) for c in calls for k in c.keywords if k.arg == "install_requires"]
    assert "pyzmq" in {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requires}
