"""A real Prometheus Pushgateway for tests (Debian's prometheus-pushgateway; scripts/setup.sh
installs it): started on a free port of 127.0.0.1, stopped afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BINARY = shutil.which("prometheus-pushgateway")


@contextmanager
def pushgateway(log_dir: Path) -> Iterator[str]:
    """Run one; yields its URL (http://127.0.0.1:PORT)."""
    if BINARY is None:
        raise RuntimeError("prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = log_dir / "pushgateway.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([BINARY, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    urllib.request.urlopen(f"{url}/-/ready", timeout=2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError(log_path.read_text()) from None
                    time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def series(url: str) -> dict[str, float]:
    """The gateway's pgvault series, keyed 'name{labels}' as it exposes them."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(("pgvault_", "postgresql_backup_"))}
