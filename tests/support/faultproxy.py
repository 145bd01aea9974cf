"""A fault-injecting TCP proxy for tests: put it between pgvault and SeaweedFS and break the network.

Modes, switchable at any time from the test (thread-safe):

* ``passthrough()``: bytes flow both ways unchanged.
* ``stall()``: like a SIGSTOPped server. New connections are accepted (the kernel does that for a
  stopped server too) but nothing is ever answered; connections already open freeze mid-stream.
  Switching back to ``passthrough()`` releases them.
* ``reset_after(n)``: every connection is cut once ``n`` bytes of the server's answer have
  reached the client (each connection counts from its own start): closed in the middle of the
  body, so the client sees a truncated answer. ``hard=True`` sends a TCP RST instead
  ("connection reset by peer"); Linux then also drops what the client had not read yet, so how
  much arrives depends on timing.
* ``http_errors(k)``: the next ``k`` connections get one ``503 Slow Down`` S3 error each, then
  are closed; later connections pass through. The mode applies when a connection starts, which
  is what a client retrying on a fresh connection sees.

Independently of the mode, ``limit_rate(n)`` caps every connection at ``n`` bytes per second in
each direction, like a path to a remote store where one TCP stream gets a fraction of what many
get (bench/s3.py uses it to show what parallel ranged reads buy); ``limit_rate(0)`` lifts it.

Everything runs in daemon threads on 127.0.0.1; ``close()`` (or leaving the ``with`` block)
closes every socket and releases stalled threads.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024
_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def _hard_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer gets a RST (a "connection reset"), not an orderly FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """A proxy listening on ``127.0.0.1:<port>`` in front of ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._cond = threading.Condition()
        self._mode = "pass"
        self._reset_bytes = 0
        self._errors_left = 0
        self._hard = False
        self._rate = 0  # bytes per second per connection and direction; 0: unlimited
        self._closed = False
        self._sockets: set[socket.socket] = set()
        # What happened, for assertions.
        self.connections = 0
        self.resets = 0
        self.errors_sent = 0
        self.bytes_up = 0  # bytes clients sent (requests and uploads), to stall in mid-upload
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._acceptor.start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- modes ----------------------------------------------------------------------------------

    def _set(self, mode: str, *, reset_bytes: int = 0, errors: int = 0) -> None:
        with self._cond:
            self._mode, self._reset_bytes, self._errors_left = mode, reset_bytes, errors
            self._cond.notify_all()

    def passthrough(self) -> None:
        self._set("pass")

    def stall(self) -> None:
        self._set("stall")

    def reset_after(self, nbytes: int, *, hard: bool = False) -> None:
        self._set("reset", reset_bytes=nbytes)
        with self._cond:
            self._hard = hard

    def http_errors(self, count: int) -> None:
        self._set("http", errors=count)

    def limit_rate(self, bytes_per_second: int) -> None:
        with self._cond:
            self._rate = bytes_per_second

    @property
    def mode(self) -> str:
        with self._cond:
            return self._mode

    # -- plumbing -------------------------------------------------------------------------------

    def _track(self, sock: socket.socket) -> bool:
        with self._cond:
            if self._closed:
                sock.close()
                return False
            self._sockets.add(sock)
            return True

    def _wait_unstalled(self) -> bool:
        """Block while stalled; False once the proxy is closed."""
        with self._cond:
            while self._mode == "stall" and not self._closed:
                self._cond.wait()
            return not self._closed

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            if not self._track(client):
                return
            with self._cond:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), name="faultproxy-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if not self._wait_unstalled():
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            _hard_close(client)
            return
        upstream.settimeout(None)
        if not self._track(upstream):
            _hard_close(client)
            return
        self._relay(client, upstream)

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Copy bytes both ways in this one thread (so a reset can close both sockets at once)."""
        sent = 0  # bytes of the server's answer forwarded on this connection
        due = {client: 0.0, upstream: 0.0}  # per direction: when its bytes so far may have passed (limit_rate)
        requests = _RequestFramer()
        peer = {client: upstream, upstream: client}
        open_ = [client, upstream]
        try:
            while open_:
                if not self._wait_unstalled():
                    return
                readable, _, _ = select.select(open_, [], [], 0.2)
                for src in readable:
                    if not self._wait_unstalled():  # stalled while we waited: hold what arrived
                        return
                    data = src.recv(_CHUNK)
                    dst = peer[src]
                    if not data:
                        open_.remove(src)
                        dst.shutdown(socket.SHUT_WR)
                        continue
                    if src is upstream:
                        with self._cond:
                            limit = self._reset_bytes if self._mode == "reset" else None
                            hard = self._hard
                        if limit is not None and sent + len(data) >= limit:
                            if limit > sent:
                                dst.sendall(data[: limit - sent])
                            with self._cond:
                                self.resets += 1
                            if hard:
                                _hard_close(client)
                            else:
                                client.shutdown(socket.SHUT_RDWR)
                                client.close()
                            _hard_close(upstream)
                            return
                        sent += len(data)
                    else:
                        with self._cond:
                            self.bytes_up += len(data)
                        data, head = requests.feed(data)
                        if head is not None:
                            if self._take_error():
                                if data:
                                    dst.sendall(data)  # the end of the previous request
                                self._answer_503(client, head, requests)
                                upstream.close()
                                return
                            data += requests.pending
                    if data:
                        dst.sendall(data)
                        with self._cond:
                            rate = self._rate
                        if rate:  # a token bucket holding 0.1 s: an idle pooled connection saves no credit
                            now = time.monotonic()
                            due[src] = max(due[src], now - 0.1) + len(data) / rate
                            time.sleep(max(0.0, due[src] - now))
        except OSError:
            pass  # one side went away: take the other down too, as a real network path would
        for s in (client, upstream):
            try:
                s.close()
            except OSError:
                pass

    def _take_error(self) -> bool:
        with self._cond:
            if self._mode == "http" and self._errors_left > 0:
                self._errors_left -= 1
                return True
            return False

    def _answer_503(self, client: socket.socket, fields: dict[bytes, bytes], requests: _RequestFramer) -> None:
        """Swallow the request (its body too, unless the client waits for 100-continue), answer 503."""
        try:
            client.settimeout(10)
            if fields.get(b"expect") != b"100-continue":
                remaining = requests.body_left
                while remaining > 0:
                    chunk = client.recv(min(remaining, _CHUNK))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            response = (
                b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                + f"Content-Length: {len(_SLOW_DOWN)}\r\n\r\n".encode()
                + _SLOW_DOWN
            )
            client.sendall(response)
            with self._cond:
                self.errors_sent += 1
        except OSError:
            pass
        finally:
            client.close()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            sockets, self._sockets = list(self._sockets), set()
            self._cond.notify_all()
        self._listener.close()
        for s in sockets:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()



class _RequestFramer:
    """Finds where each HTTP/1.1 request starts in the client's byte stream (Content-Length framing).

    ``feed`` returns the bytes that belong to the request in progress (to forward) and, when a new
    request's head is complete, its header fields; that head and the body bytes that came with it
    wait in ``pending`` until the caller forwards them or answers the request itself. Clients do
    not pipeline, so one ``feed`` completes at most one head. A chunked request body switches
    framing off for the connection (botocore sends Content-Length to S3).
    """

    def __init__(self) -> None:
        self.body_left = 0  # body bytes of the current request not yet seen
        self.pending = b""
        self._buf = b""
        self._opaque = False

    def feed(self, data: bytes) -> tuple[bytes, dict[bytes, bytes] | None]:
        if self._opaque:
            return data, None
        buf, out = self._buf + data, b""
        if self.body_left:
            take = min(self.body_left, len(buf))
            out, buf, self.body_left = buf[:take], buf[take:], self.body_left - take
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._buf = buf  # part of a head (or nothing): wait for more
            return out, None
        head, rest, self._buf = buf[: end + 4], buf[end + 4 :], b""
        fields: dict[bytes, bytes] = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name:
                fields[name.strip().lower()] = value.strip().lower()
        if b"chunked" in fields.get(b"transfer-encoding", b""):
            self._opaque = True
            return out + head + rest, None
        self.body_left = max(int(fields.get(b"content-length", b"0") or 0) - len(rest), 0)
        self.pending = head + rest
        return out, fields
