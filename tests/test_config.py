"""tierd.config: precedence (defaults < file < env < flags), defaults, and the errors each
source gives. Every test passes its own `env` mapping so the machine's environment cannot
leak in; files are real files in tmp_path."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierd.config import (
    DRAM_GRANULE,
    NVME_DEFAULT_CAP,
    Config,
    add_serve_arguments,
    default_dram_bytes,
    default_nvme_bytes,
    default_nvme_dir,
    default_socket_path,
    load_config,
)
from tierd.errors import ConfigError
from tierd.sizes import GiB, MiB

OPTION_NAMES = [f.name for f in dataclasses.fields(Config)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tierd serve")
    add_serve_arguments(p)
    return p


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no TIERD_* variables and a private home and runtime dir."""
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    home.mkdir()
    runtime.mkdir()
    return {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}


def write(tmp_path: Path, text: str, name: str = "tierd.toml") -> Path:
    d = tmp_path / "etc"
    d.mkdir(exist_ok=True)
    path = d / name
    path.write_text(text)
    return path


def load(
    base_env: dict[str, str],
    *,
    file: Path | None = None,
    env: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> Config:
    args = parser().parse_args(([f"--config={file}"] if file else []) + (argv or []))
    return load_config(args, env={**base_env, **(env or {})})


def toml_value(value: Any) -> str:
    """A Python value as a TOML value (JSON strings, numbers and booleans are valid TOML)."""
    return json.dumps(value)


# ------------------------------------------------------------------------------ precedence


# (option, file value, env value, argv, expected from file, from env, from flag)
PRECEDENCE = [
    ("dram", "1GiB", "2000MB", ["--dram", "3 GiB"], GiB, 2 * 10**9, 3 * GiB),
    ("nvme", 0, "10GB", ["--nvme=5GiB"], 0, 10 * 10**9, 5 * GiB),
    ("io_threads", 2, "8", ["--io-threads", "16"], 2, 8, 16),
    ("log_level", "debug", "warning", ["--log-level", "ERROR"], "DEBUG", "WARNING", "ERROR"),
    ("metrics_port", 9000, "9001", ["--metrics-port", "0"], 9000, 9001, 0),
    ("metrics_host", "0.0.0.0", "::1", ["--metrics-host", "localhost"], "0.0.0.0", "::1", "localhost"),
    ("calibrate", False, "1", ["--no-calibrate"], False, True, False),
    ("socket_mode", "0660", "0640", ["--socket-mode", "600"], 0o660, 0o640, 0o600),
    ("max_frame_bytes", "1MiB", "2MiB", ["--max-frame-bytes", "4194304"], MiB, 2 * MiB, 4 * MiB),
    ("demote_high_watermark", 0.9, "0.97", ["--demote-high-watermark", "99%"], 0.9, 0.97, 0.99),
    ("demote_low_watermark", 0.5, "0.6", ["--demote-low-watermark", "0.7"], 0.5, 0.6, 0.7),
    ("object_url", "memory://", "file:///srv/tierd", ["--object-url", "s3://kv-cache/node"],
     "memory://", "file:///srv/tierd", "s3://kv-cache/node"),
    ("object_write", "back", "through", ["--object-write", "back"], "back", "through", "back"),
    ("object_lookup_budget", 0.02, "100ms", ["--object-lookup-budget", "0.2"], 0.02, 0.1, 0.2),
    ("object_lookup_strategy", "walk", " BISECT", ["--object-lookup-strategy", "walk"], "walk", "bisect", "walk"),
    ("object", "1GiB", "2GiB", ["--object", "0"], GiB, 2 * GiB, 0),
    ("node_id", "rack1-a", "rack1-b", ["--node-id", "rack1-c"], "rack1-a", "rack1-b", "rack1-c"),
    ("nvme_codec", "zstd", "ZSTD-shuffle:1", ["--nvme-codec", "int8k-tq3v"], "zstd:3", "zstd-shuffle:1", "int8k-tq3v"),
    ("object_codec", "zstd:1", "int8k-tq4v", ["--object-codec", "zstd:-3"], "zstd:1", "int8k-tq4v", "zstd:-3"),
    ("quotas", "a:1KiB", "b:2KiB", ["--quotas", "a:1KiB,b:1MiB"], {"a": 1024}, {"b": 2048}, {"a": 1024, "b": 1 << 20}),
    ("allow_uids", "root", "12345", ["--allow-uids", "self,root"], "0", "12345", "self,0"),
    ("namespaces", "1001:tenantA", "1002:tenantB", ["--namespaces", "root:tenantC"],
     "1001:tenantA", "1002:tenantB", "0:tenantC"),
    ("progress_interval", 2, "0.5", ["--progress-interval", "100ms"], 2.0, 0.5, 0.1),
]


@pytest.mark.parametrize(("name", "file_value", "env_value", "argv", "from_file", "from_env", "from_flag"),
                         PRECEDENCE, ids=[c[0] for c in PRECEDENCE])
def test_file_then_env_then_flag_each_override_the_one_before(
    tmp_path: Path, base_env: dict[str, str], name: str, file_value: Any, env_value: str,
    argv: list[str], from_file: Any, from_env: Any, from_flag: Any,
) -> None:
    default = getattr(load(base_env), name)
    file = write(tmp_path, f"{name} = {toml_value(file_value)}\n")
    env = {f"TIERD_{name.upper()}": env_value}

    assert getattr(load(base_env, file=file), name) == from_file != default
    assert getattr(load(base_env, file=file, env=env), name) == from_env != from_file
    assert getattr(load(base_env, file=file, env=env, argv=argv), name) == from_flag != from_env
    # a flag wins over the file with no environment in between, too
    assert getattr(load(base_env, file=file, argv=argv), name) == from_flag


def test_sources_combine_key_by_key(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, 'dram = "1GiB"\nnvme = "2GiB"\nio_threads = 2\n')
    cfg = load(base_env, file=file, env={"TIERD_NVME": "3GiB"}, argv=["--io-threads", "5"])
    assert (cfg.dram, cfg.nvme, cfg.io_threads) == (GiB, 3 * GiB, 5)


def test_env_can_turn_off_what_the_file_turned_on(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, 'metrics_port = 9100\nrecord_trace = "trace.parquet"\n')
    on = load(base_env, file=file)
    assert on.metrics_port == 9100 and on.record_trace == str(file.parent / "trace.parquet")
    off = load(base_env, file=file, env={"TIERD_METRICS_PORT": "off", "TIERD_RECORD_TRACE": ""})
    assert off.metrics_port is None and off.record_trace is None
    assert load(base_env, file=file, argv=["--metrics-port", "none"]).metrics_port is None


@pytest.mark.parametrize("text", ["8GiB", "8 GiB", "8gib", "8589934592", "8192MiB"])
def test_sizes_are_accepted_in_file_env_and_flag(tmp_path: Path, base_env: dict[str, str], text: str) -> None:
    file = write(tmp_path, f"dram = {toml_value(text)}\nnvme = {toml_value(text)}\n")
    from_file = load(base_env, file=file)
    from_env = load(base_env, env={"TIERD_DRAM": text, "TIERD_NVME": text})
    from_flag = load(base_env, argv=["--dram", text, "--nvme", text])
    for cfg in (from_file, from_env, from_flag):
        assert cfg.dram == cfg.nvme == 8 * GiB


def test_sizes_in_a_file_may_be_plain_integers(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, "dram = 1073741824\nmax_frame_bytes = 1_048_576\n")
    cfg = load(base_env, file=file)
    assert (cfg.dram, cfg.max_frame_bytes) == (GiB, MiB)


def test_si_and_iec_units_differ(base_env: dict[str, str]) -> None:
    assert load(base_env, argv=["--dram", "1GB"]).dram == 10**9
    assert load(base_env, argv=["--dram", "1GiB"]).dram == 2**30


# -------------------------------------------------------------------------------- defaults


def test_defaults_are_sane(base_env: dict[str, str]) -> None:
    cfg = load(base_env)
    assert cfg.socket == os.path.join(base_env["XDG_RUNTIME_DIR"], "tierd.sock")
    assert cfg.dram >= 64 * MiB and cfg.dram % DRAM_GRANULE == 0
    assert cfg.nvme_dir == os.path.join(base_env["HOME"], ".cache", "tierd", "chunks")
    assert 0 <= cfg.nvme <= NVME_DEFAULT_CAP
    assert cfg.metrics_port is None and cfg.metrics_host == "127.0.0.1"
    assert cfg.log_level == "INFO" and cfg.record_trace is None and cfg.calibrate is True
    assert (cfg.demote_low_watermark, cfg.demote_high_watermark) == (0.85, 0.95)
    assert cfg.max_frame_bytes == 16 * MiB and cfg.socket_mode == 0o600 and cfg.io_threads == 4


def test_loading_creates_nothing(base_env: dict[str, str]) -> None:
    cfg = load(base_env)
    assert not os.path.exists(cfg.nvme_dir) and not os.path.exists(cfg.socket)


def test_default_dram_fits_the_machine() -> None:
    quarter = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    st = os.statvfs("/dev/shm")
    shm_free = st.f_bavail * st.f_frsize
    dram = default_dram_bytes()
    assert dram % DRAM_GRANULE == 0
    assert dram == 64 * MiB or dram <= min(quarter, shm_free)
    assert dram >= 64 * MiB


def test_default_socket_uses_a_writable_runtime_dir_else_tmp(tmp_path: Path) -> None:
    fallback = f"/tmp/tierd-{os.getuid()}/tierd.sock"  # a private directory, not a name in /tmp
    assert default_socket_path(env={"XDG_RUNTIME_DIR": str(tmp_path)}) == str(tmp_path / "tierd.sock")
    assert default_socket_path(env={}) == fallback
    assert default_socket_path(env={"XDG_RUNTIME_DIR": str(tmp_path / "missing")}) == fallback
    (tmp_path / "file").write_text("")
    assert default_socket_path(env={"XDG_RUNTIME_DIR": str(tmp_path / "file")}) == fallback
    assert default_socket_path(env={"XDG_RUNTIME_DIR": "relative/dir"}) == fallback
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    assert default_socket_path(env={"XDG_RUNTIME_DIR": str(deep)}) == fallback  # too long to bind


def test_default_nvme_dir_is_under_the_cache_dir(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert default_nvme_dir(env={"XDG_CACHE_HOME": str(cache)}) == str(cache / "tierd" / "chunks")
    assert default_nvme_dir(env={"HOME": str(tmp_path)}) == str(tmp_path / ".cache" / "tierd" / "chunks")
    assert default_nvme_dir(env={"HOME": str(tmp_path), "XDG_CACHE_HOME": "rel"}) == str(
        tmp_path / ".cache" / "tierd" / "chunks")


def test_default_nvme_follows_the_configured_dir(tmp_path: Path, base_env: dict[str, str]) -> None:
    target = tmp_path / "not" / "yet" / "there"
    cfg = load(base_env, argv=["--nvme-dir", str(target)])
    assert cfg.nvme_dir == str(target)
    assert cfg.nvme == default_nvme_bytes(str(target))
    st = os.statvfs(tmp_path)
    assert cfg.nvme <= min(st.f_bavail * st.f_frsize // 10, NVME_DEFAULT_CAP)
    assert cfg.nvme % MiB == 0


def test_env_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("TIERD_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("TIERD_DRAM", "1GiB")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = load_config()
    assert cfg.dram == GiB and cfg.nvme_dir == str(tmp_path / "tierd" / "chunks")


# ------------------------------------------------------------------------------------ paths


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path: Path, base_env: dict[str, str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    file = write(tmp_path, 'socket = "s.sock"\nnvme_dir = "chunks"\n')
    monkeypatch.chdir(tmp_path / "home")
    cfg = load(base_env, file=file)
    assert cfg.socket == str(file.parent / "s.sock") and cfg.nvme_dir == str(file.parent / "chunks")
    from_env = load(base_env, env={"TIERD_NVME_DIR": "chunks"})
    assert from_env.nvme_dir == str(tmp_path / "home" / "chunks")


def test_tilde_is_expanded(base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", base_env["HOME"])
    cfg = load(base_env, argv=["--nvme-dir", "~/kv"])
    assert cfg.nvme_dir == os.path.join(base_env["HOME"], "kv")


# ----------------------------------------------------------------------------- bad values


# (option, bad values as strings, usable in every source)
BAD_STRINGS = [
    ("socket", ["", "/" + "x" * 200]),
    ("dram", ["lots", "0", "-1GiB", "8G", "1e9"]),
    ("nvme", ["lots", "-1", "8 XB"]),
    ("nvme_dir", [""]),
    ("metrics_port", ["65536", "-1", "http", "80.5"]),
    ("metrics_host", ["", "a b"]),
    ("log_level", ["verbose", "", "5"]),
    ("calibrate", ["maybe", "2"]),
    ("demote_high_watermark", ["0", "1.5", "-0.1", "high", "nan", "150%"]),
    ("demote_low_watermark", ["0", "2", "low"]),
    ("max_frame_bytes", ["100", "8GiB", "lots"]),
    ("socket_mode", ["0800", "9999", "0400", "rw", ""]),
    ("io_threads", ["0", "65", "four", "2.5", ""]),
    ("object_url", ["ftp://bucket/x", "s3://", "s3://UPPER/x", "file://relative", "bucket/prefix", "memory"]),
    ("object", ["lots", "-1"]),
    ("object_write", ["sideways", "", "thru"]),
    ("object_timeout", ["0", "-1", "forever", "601", "5min"]),
    ("object_lookup_budget", ["0", "fast", "0ms"]),
    ("object_lookup_strategy", ["fast", "", "bisect,walk", "binary"]),
    ("object_queue", ["big", "-5"]),
    ("node_id", ["", "two words", "x" * 65]),
    ("nvme_codec", ["lz4", "", "zstd:0", "zstd:23", "zstd:fast", "int8k-tq2v", "raw:1"]),
    ("object_codec", ["gzip", "zstd-shuffle:-8", "int8"]),
    ("allow_uids", ["", " ", "no-such-user-tierd", "1,,2", "4294967295", "self,"]),
    ("namespaces", ["tenantA", ":tenantA", "1001:", "1001:a,1001:b", "no-such-user-tierd:a", "1001:" + "n" * 256]),
    ("progress_interval", ["0", "-1", "soon", "601"]),
    ("quotas", ["tenantA", "tenantA:0", "tenantA:lots", ":1GiB", "a:1GiB,b"]),
    ("codec_device", ["gpu", "", "cuda:0"]),
]
# --calibrate/--no-calibrate take no value, so argparse itself refuses a bad one
BAD_CASES = [
    (source, name, value)
    for name, values in BAD_STRINGS
    for value in values
    for source in ("file", "env", "flag")
    if not (source == "flag" and name == "calibrate")
]


@pytest.mark.parametrize(("source", "name", "value"), BAD_CASES,
                         ids=[f"{s}-{n}={v[:12]!r}" for s, n, v in BAD_CASES])
def test_bad_values_from_every_source_name_the_key(
    tmp_path: Path, base_env: dict[str, str], source: str, name: str, value: str
) -> None:
    flag = "--" + name.replace("_", "-")
    env_var = "TIERD_" + name.upper()
    with pytest.raises(ConfigError) as info:
        if source == "file":
            load(base_env, file=write(tmp_path, f"{name} = {toml_value(value)}\n"))
        elif source == "env":
            load(base_env, env={env_var: value})
        else:
            load(base_env, argv=[f"{flag}={value}"])
    message = str(info.value)
    expected_key = {"file": f"{tmp_path / 'etc' / 'tierd.toml'}: {name}=", "env": f"{env_var}=", "flag": f"{flag}="}[source]
    assert expected_key in message
    assert repr(value)[:40] in message


# values only a config file can hold: the wrong type altogether
BAD_NATIVES = [
    ("dram", True), ("dram", 1.5), ("dram", [1]), ("nvme", -1), ("io_threads", True), ("io_threads", 4.0),
    ("calibrate", 1), ("metrics_port", True), ("metrics_port", 1.5), ("log_level", 10), ("socket", 5),
    ("record_trace", 5), ("nvme_dir", ["a"]), ("socket_mode", 1000), ("socket_mode", True),
    ("demote_high_watermark", True), ("metrics_host", 127), ("nvme_codec", 3), ("object_codec", ["zstd"]), ("quotas", 5),
    ("quotas", {"a": "lots"}),
    ("allow_uids", True), ("allow_uids", 1.5), ("allow_uids", [True]), ("allow_uids", []),
    ("namespaces", 5), ("namespaces", {"1001": 5}), ("namespaces", ["1001"]), ("progress_interval", True),
    ("object_timeout", 10**400), ("mrc_sample_rate", 10**400),  # YAML ints beyond float range
    ("object_lookup_strategy", 1), ("object_lookup_strategy", ["bisect"]),
]


@pytest.mark.parametrize(("name", "value"), BAD_NATIVES, ids=[f"{n}={v!r:.24}" for n, v in BAD_NATIVES])
def test_wrong_types_in_a_yaml_file_name_the_key(tmp_path: Path, base_env: dict[str, str], name: str, value: Any) -> None:
    file = write(tmp_path, yaml.safe_dump({name: value}), name="tierd.yaml")
    with pytest.raises(ConfigError) as info:
        load(base_env, file=file)
    assert f"{file}: {name}={value!r}" in str(info.value)


def test_error_message_says_what_to_write(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(base_env, env={"TIERD_DRAM": "lots"})
    assert str(info.value).startswith("TIERD_DRAM='lots': use a size like 8GiB or 8000MB")


@pytest.mark.parametrize("port", ["0", "1", "65535"])
def test_port_range_edges_are_valid(base_env: dict[str, str], port: str) -> None:
    assert load(base_env, env={"TIERD_METRICS_PORT": port}).metrics_port == int(port)


@pytest.mark.parametrize("port", ["65536", "100000", "-1"])
def test_port_out_of_range(base_env: dict[str, str], port: str) -> None:
    with pytest.raises(ConfigError, match=r"--metrics-port=.*0 to 65535"):
        load(base_env, argv=[f"--metrics-port={port}"])


def test_long_socket_path_is_refused_before_bind(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="TIERD_SOCKET=.*shorter path"):
        load(base_env, env={"TIERD_SOCKET": "/tmp/" + "s" * 120 + ".sock"})


# ------------------------------------------------------------------------------ watermarks


@pytest.mark.parametrize(
    ("env", "argv"),
    [
        ({"TIERD_DEMOTE_LOW_WATERMARK": "0.96"}, []),  # above the default high
        ({}, ["--demote-high-watermark", "0.8"]),  # below the default low
        ({"TIERD_DEMOTE_LOW_WATERMARK": "0.9"}, ["--demote-high-watermark", "0.9"]),  # equal
    ],
)
def test_low_watermark_must_be_below_high(base_env: dict[str, str], env: dict[str, str], argv: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(base_env, env=env, argv=argv)
    message = str(info.value)
    assert "demote_low_watermark" in message and "demote_high_watermark" in message
    assert ("TIERD_DEMOTE_LOW_WATERMARK" in message) == bool(env)
    assert ("--demote-high-watermark" in message) == bool(argv)


def test_watermarks_from_different_sources_are_checked_together(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, "demote_high_watermark = 0.7\ndemote_low_watermark = 0.6\n")
    assert load(base_env, file=file).demote_high_watermark == 0.7
    with pytest.raises(ConfigError, match=r"from TIERD_DEMOTE_LOW_WATERMARK.*from .*tierd.toml: demote_high_watermark"):
        load(base_env, file=file, env={"TIERD_DEMOTE_LOW_WATERMARK": "0.75"})


def test_high_watermark_may_be_one(base_env: dict[str, str]) -> None:
    assert load(base_env, argv=["--demote-high-watermark", "1"]).demote_high_watermark == 1.0


# ------------------------------------------------------------------- unknown keys and files


def test_unknown_file_key_is_an_error_with_a_suggestion(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, 'dramm = "8GiB"\n')
    with pytest.raises(ConfigError) as info:
        load(base_env, file=file)
    message = str(info.value)
    assert str(file) in message and "'dramm'" in message and "did you mean 'dram'" in message
    assert all(name in message for name in OPTION_NAMES)  # lists the valid keys


def test_unknown_key_under_the_tierd_table(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, '[tierd]\ndram = "1GiB"\nio_thread = 3\n')
    with pytest.raises(ConfigError, match=r"'tierd.io_thread' \(did you mean 'io_threads'\?\)"):
        load(base_env, file=file)


def test_keys_outside_the_tierd_table_are_errors(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, 'dram = "1GiB"\n[tierd]\nnvme = 0\n')
    with pytest.raises(ConfigError, match=r"'dram' .*outside the \[tierd\] table"):
        load(base_env, file=file)


def test_options_under_a_tierd_table(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, '[tierd]\ndram = "1GiB"\nsocket_mode = 0o660\n')
    cfg = load(base_env, file=file)
    assert cfg.dram == GiB and cfg.socket_mode == 0o660
    with pytest.raises(ConfigError, match=r"tierd.toml: tierd.dram='x'"):
        load(base_env, file=write(tmp_path, '[tierd]\ndram = "x"\n'))


def test_unknown_tierd_env_var_is_an_error_with_a_suggestion(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(base_env, env={"TIERD_DRAMM": "1GiB", "TIERD_ZZZ": "1"})
    message = str(info.value)
    assert "'TIERD_DRAMM' (did you mean 'TIERD_DRAM'?)" in message
    assert "'TIERD_ZZZ'" in message and "TIERD_ZZZ' (did you mean" not in message
    assert "TIERD_IO_THREADS" in message  # lists the valid ones


def test_other_env_vars_are_ignored(base_env: dict[str, str]) -> None:
    assert load(base_env, env={"DRAM": "x", "tierd_dram": "x", "XTIERD_DRAM": "x"}).io_threads == 4


@pytest.mark.parametrize("name", ["tierd.toml", "tierd.yaml"])
def test_bad_syntax_names_the_file(tmp_path: Path, base_env: dict[str, str], name: str) -> None:
    file = write(tmp_path, 'dram = "1GiB\nnvme = [\n' if name.endswith("toml") else "dram: [1GiB\nnvme: {\n", name=name)
    with pytest.raises(ConfigError) as info:
        load(base_env, file=file)
    message = str(info.value)
    assert str(file) in message and "--config" in message
    assert ("TOML" if name.endswith("toml") else "YAML") in message
    assert "line" in message


def test_missing_config_file_from_flag_env_or_argument(tmp_path: Path, base_env: dict[str, str]) -> None:
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"--config=.*nope.toml.*no such file"):
        load(base_env, argv=["--config", missing])
    with pytest.raises(ConfigError, match=r"TIERD_CONFIG=.*nope.toml.*no such file"):
        load(base_env, env={"TIERD_CONFIG": missing})
    with pytest.raises(ConfigError, match=r"config_file=.*nope.toml.*no such file"):
        load_config(env=base_env, config_file=missing)


def test_a_directory_is_not_a_config_file(tmp_path: Path, base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(base_env, argv=["--config", str(tmp_path)])


def test_config_file_named_by_env_and_flag_wins(tmp_path: Path, base_env: dict[str, str]) -> None:
    by_env = write(tmp_path, "io_threads = 2\n", name="env.toml")
    by_flag = write(tmp_path, "io_threads = 3\n", name="flag.toml")
    assert load(base_env, env={"TIERD_CONFIG": str(by_env)}).io_threads == 2
    assert load(base_env, env={"TIERD_CONFIG": str(by_env)}, argv=["--config", str(by_flag)]).io_threads == 3
    assert load(base_env, env={"TIERD_CONFIG": ""}).io_threads == 4  # empty: no file


def test_top_level_must_be_a_mapping(tmp_path: Path, base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load(base_env, file=write(tmp_path, "- dram\n", name="t.yml"))


def test_non_utf8_file(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = tmp_path / "bad.toml"
    file.write_bytes(b'log_level = "\xff"\n')
    with pytest.raises(ConfigError, match="bad.toml.*UTF-8"):
        load(base_env, file=file)


# ------------------------------------------------------------------------------------- YAML


def test_yaml_file_works(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, """
tierd:
  dram: 2GiB
  nvme: 0
  metrics_port: 9400
  log_level: debug
  calibrate: no          # YAML 1.1 boolean
  socket_mode: 0660      # YAML 1.1 octal literal
  demote_high_watermark: 0.9
  demote_low_watermark: 80%
  record_trace: traces/run.parquet
""", name="tierd.yaml")
    cfg = load(base_env, file=file)
    assert (cfg.dram, cfg.nvme, cfg.metrics_port, cfg.log_level) == (2 * GiB, 0, 9400, "DEBUG")
    assert cfg.calibrate is False and cfg.socket_mode == 0o660
    assert (cfg.demote_low_watermark, cfg.demote_high_watermark) == (0.8, 0.9)
    assert cfg.record_trace == str(file.parent / "traces" / "run.parquet")


def test_empty_yaml_file_is_all_defaults(tmp_path: Path, base_env: dict[str, str]) -> None:
    assert load(base_env, file=write(tmp_path, "", name="t.yml")) == load(base_env)


def test_yaml_off_and_null_turn_metrics_off(tmp_path: Path, base_env: dict[str, str]) -> None:
    for text in ("metrics_port: off\n", "metrics_port: null\n", "metrics_port: none\n"):
        assert load(base_env, file=write(tmp_path, text, name="t.yaml")).metrics_port is None


def test_pyyaml_is_declared_so_a_yaml_config_works_on_a_clean_install() -> None:
    """YAML files are read with PyYAML at run time, so it must be an install requirement of
    tierd itself, not something only the test environment happens to bring."""
    setup_py = Path(__file__).resolve().parents[1] / "setup.py"
    calls = [n for n in ast.walk(ast.parse(setup_py.read_text())) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "setup"]
    (requires,) = [ast.literal_eval(k.value) for c in calls for k in c.keywords if k.arg == "install_requires"]
    names = {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requires}
    assert "pyyaml" in names, requires


# -------------------------------------------------------------------------- argparse, Config


def test_flags_default_to_none_so_absence_is_visible() -> None:
    args = parser().parse_args([])
    assert args.config is None
    for name in OPTION_NAMES:
        assert getattr(args, name) is None, name


def test_calibrate_flag_pair() -> None:
    assert parser().parse_args(["--calibrate"]).calibrate is True
    assert parser().parse_args(["--no-calibrate"]).calibrate is False


def test_namespace_without_serve_flags_is_fine(base_env: dict[str, str]) -> None:
    """A client subcommand's namespace (only --socket) can be passed as is."""
    cfg = load_config(argparse.Namespace(socket="/tmp/x.sock", json=True), env=base_env)
    assert cfg.socket == "/tmp/x.sock"


def test_config_is_frozen(base_env: dict[str, str]) -> None:
    cfg = load(base_env)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dram = 1  # type: ignore[misc]


def test_config_built_directly_is_validated_and_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = Config(socket="t.sock", dram="1GiB", nvme_dir="chunks", nvme=0, socket_mode="0660", log_level="debug")  # type: ignore[arg-type]
    assert cfg.socket == str(tmp_path / "t.sock") and cfg.dram == GiB
    assert cfg.socket_mode == 0o660 and cfg.log_level == "DEBUG"
    with pytest.raises(ConfigError, match=r"Config.io_threads=0"):
        dataclasses.replace(cfg, io_threads=0)
    with pytest.raises(ConfigError, match="demote_low_watermark"):
        dataclasses.replace(cfg, demote_low_watermark=0.99)


def test_to_dict_reports_every_option_and_loads_back(tmp_path: Path, base_env: dict[str, str]) -> None:
    cfg = load(base_env, argv=["--dram", "1GiB", "--metrics-port", "9100", "--socket-mode", "0660"])
    d = cfg.to_dict()
    assert list(d) == OPTION_NAMES
    assert d["dram"] == GiB and d["socket_mode"] == "0660" and d["metrics_port"] == 9100
    json.dumps(d)  # plain values only
    file = write(tmp_path, yaml.safe_dump(d), name="dump.yaml")
    assert load(base_env, file=file) == cfg


@pytest.mark.parametrize("value", ["0", "1.5", "lots", "-0.1"])
def test_bad_mrc_sample_rate_names_the_flag(value):
    import argparse

    from tierd.config import add_serve_arguments, load_config

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    with pytest.raises(ConfigError, match="--mrc-sample-rate"):
        load_config(parser.parse_args(["--mrc-sample-rate", value]), env={})


# ------------------------------------------------------------------------- peers and namespaces


def test_users_are_given_by_uid_name_or_self_in_any_source_form(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, 'allow_uids = ["self", 0, "root", 1001]\n[namespaces]\n1001 = "tenantA"\nroot = " tenantB "\n')
    cfg = load(base_env, file=file)
    assert cfg.allow_uids == "self,0,1001"  # names resolved, duplicates dropped, order kept
    assert cfg.namespaces == "1001:tenantA,0:tenantB"
    listed = write(tmp_path, 'namespaces = ["self:mine", "1002:theirs"]\n', name="list.toml")
    assert load(base_env, file=listed).namespaces == "self:mine,1002:theirs"


def test_namespaces_can_be_turned_off_again(tmp_path: Path, base_env: dict[str, str]) -> None:
    file = write(tmp_path, 'namespaces = "1001:tenantA"\n')
    assert load(base_env, file=file, env={"TIERD_NAMESPACES": "off"}).namespaces == ""
    assert load(base_env).namespaces == "" and load(base_env).allow_uids == "self"
    assert load(base_env).progress_interval == 1.0


def test_an_unknown_user_is_named_in_the_error(base_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(base_env, argv=["--allow-uids", "self,no-such-user-tierd"])
    assert "--allow-uids='self,no-such-user-tierd': there is no user 'no-such-user-tierd'" in str(info.value)
    with pytest.raises(ConfigError, match="bound to two namespaces"):
        load(base_env, env={"TIERD_NAMESPACES": "root:a,0:b"})


def test_peer_options_print_and_load_back(tmp_path: Path, base_env: dict[str, str]) -> None:
    cfg = load(base_env, argv=["--allow-uids", "self,root,1001", "--namespaces", "1001:a,root:b",
                               "--progress-interval", "250ms"])
    d = cfg.to_dict()
    assert (d["allow_uids"], d["namespaces"], d["progress_interval"]) == ("self,0,1001", "1001:a,0:b", 0.25)
    file = write(tmp_path, yaml.safe_dump(d), name="dump.yaml")
    assert load(base_env, file=file) == cfg
