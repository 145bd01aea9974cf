"""A local notification receiver: an HTTP server on 127.0.0.1 that records every POSTed JSON body
and answers with ``status`` after ``stall`` seconds (a receiver that never answers: a long stall).

The URL carries a token in its path, as a Slack webhook does, so tests can check that it never
shows up anywhere."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "s3cr3t-t0ken-XYZZY"


@dataclass
class Receiver:
    status: int = 200
    stall: float = 0.0
    port: int = 0
    posts: list[tuple[str, Any]] = field(default_factory=list)  # (path, body)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}/{TOKEN}"

    @property
    def bodies(self) -> list[Any]:
        return [b for _, b in self.posts]

    def bodies_at(self, path: str) -> list[Any]:
        return [b for p, b in self.posts if p.startswith(path + "/")]


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length", 0))
            state.posts.append((self.path, json.loads(self.rfile.read(length))))
            if state.stall:
                time.sleep(state.stall)
            self.send_response(state.status)
            self.end_headers()
            self.wfile.write(b"ok" if state.status < 400 else b"no_service")

        def log_message(self, *_: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True  # a stalled answer must not hold up the test's end

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # the client gave up on a stalled answer (that is the test): no traceback

    server = Server(("127.0.0.1", 0), Handler)
    state.port = int(server.server_address[1])
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
