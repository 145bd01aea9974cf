"""Sending job notifications: the generic JSON webhook and a Slack incoming webhook.

What is sent is decided in :mod:`pgvault.policy.notify`; this module only POSTs it.  Three
promises shape it:

* It never raises: a notification that cannot be delivered is a :class:`Delivery` with
  ``ok=False`` (the caller logs a warning), so a successful job never becomes a failed one.
* It is bounded in time: each attempt has ``timeout`` (urllib's socket timeout: connecting,
  and each wait for bytes), a failed attempt is retried ``retries`` times after a short backoff
  when retrying can help (no answer, connection refused, HTTP 5xx / 408 / 429; not another 4xx:
  a revoked Slack token stays revoked), and the targets are tried in parallel threads that are
  abandoned at :func:`time_bound` — a receiver trickling bytes cannot hold the job up either.
  A Kubernetes Job gets SIGKILL 30 s after SIGTERM by default; the default bound is 17.5 s.
* The URL is a credential (a Slack webhook's path is its token): it is named only as
  ``scheme://host/...`` (:func:`pgvault.log.redact_url`), in results, messages and logs alike.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pgvault
from pgvault import log
from pgvault.policy.notify import slack_payload

if TYPE_CHECKING:
    from collections.abc import Callable

    from pgvault.config import NotifyOptions

BACKOFF = (0.5, 1.0, 2.0)  # seconds before retry 1, 2, 3...; the last repeats
_BODY_SHOWN = 200  # characters of a refusing receiver's answer kept in the detail (Slack: "invalid_token")


@dataclass(frozen=True)
class Target:
    """One configured receiver: ``kind`` is ``webhook`` (the document as it is) or ``slack``."""

    kind: str
    url: str = field(repr=False)

    @property
    def where(self) -> str:
        return log.redact_url(self.url)

    def body(self, doc: dict[str, Any]) -> dict[str, Any]:
        return slack_payload(doc) if self.kind == "slack" else doc


@dataclass(frozen=True)
class Delivery:
    """What became of one notification; ``detail`` never holds the URL."""

    kind: str
    where: str
    ok: bool
    attempts: int
    seconds: float
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"target": self.kind, "where": self.where, "ok": self.ok, "attempts": self.attempts,
                "seconds": round(self.seconds, 3), "detail": self.detail}


def targets(opts: NotifyOptions) -> list[Target]:
    out = []
    if opts.webhook_url:
        out.append(Target("webhook", opts.webhook_url))
    if opts.slack_webhook_url:
        out.append(Target("slack", opts.slack_webhook_url))
    return out


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...)."""
    return BACKOFF[min(attempt, len(BACKOFF)) - 1]


def time_bound(opts: NotifyOptions) -> float:
    """The longest a notification may hold up the job: every attempt timing out, plus the backoffs
    between them, plus a second of slack for the threads' start and the JSON."""
    return opts.timeout * (opts.retries + 1) + sum(backoff(i) for i in range(1, opts.retries + 1)) + 1.0


class _Failed(Exception):
    def __init__(self, detail: str, *, retry: bool) -> None:
        super().__init__(detail)
        self.detail, self.retry = detail, retry


def post_json(url: str, body: dict[str, Any], timeout: float) -> str:
    """POST ``body`` as JSON; the answer's status line, or :class:`_Failed` saying why not (no URL)."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"pgvault/{pgvault.__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only (config)
            response.read(_BODY_SHOWN)
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as e:
        try:
            text = e.read(_BODY_SHOWN).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the status is the message; the body is a courtesy
            text = ""
        e.close()
        detail = f"HTTP {e.code} {e.reason}" + (f": {log.redact(text)}" if text else "")
        raise _Failed(detail, retry=e.code >= 500 or e.code in (408, 429)) from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            raise _Failed(f"no connection within {timeout:g}s", retry=True) from None
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
        raise _Failed(log.redact(str(text)), retry=True) from None
    except TimeoutError:
        raise _Failed(f"no answer within {timeout:g}s", retry=True) from None
    except OSError as e:  # reset by peer mid-answer, and the like
        raise _Failed(log.redact(e.strerror or str(e)), retry=True) from None


def deliver(target: Target, doc: dict[str, Any], *, timeout: float, retries: int,
            sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Send ``doc`` to ``target``, retrying as the module says; never raises."""
    started = time.monotonic()
    body = target.body(doc)
    detail, attempt = "", 0
    for attempt in range(1, retries + 2):
        if attempt > 1:
            sleep(backoff(attempt - 1))
        try:
            status = post_json(target.url, body, timeout)
            return Delivery(target.kind, target.where, True, attempt, time.monotonic() - started, status)
        except _Failed as e:
            detail = e.detail
            if not e.retry:
                break
        except Exception as e:  # noqa: BLE001 - a notification must never fail the job
            detail = f"{type(e).__name__}: {log.redact(str(e))}"
            break
    return Delivery(target.kind, target.where, False, attempt, time.monotonic() - started, detail)


def send(opts: NotifyOptions, doc: dict[str, Any]) -> list[Delivery]:
    """Deliver ``doc`` to every configured target in parallel, within :func:`time_bound`."""
    chosen = targets(opts)
    results: dict[int, Delivery] = {}
    started = time.monotonic()

    def run(i: int, t: Target) -> None:
        results[i] = deliver(t, doc, timeout=opts.timeout, retries=opts.retries)

    # Daemon threads: one stuck past the bound is abandoned, and does not keep the process alive.
    threads = [threading.Thread(target=run, args=(i, t), name=f"pgvault-notify-{t.kind}", daemon=True)
               for i, t in enumerate(chosen)]
    for th in threads:
        th.start()
    deadline = started + time_bound(opts)
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    out = []
    for i, t in enumerate(chosen):
        d = results.get(i)
        if d is None:
            d = Delivery(t.kind, t.where, False, 0, time.monotonic() - started,
                         f"gave up after {time_bound(opts):.1f}s (the receiver kept the connection open)")
        out.append(d)
    return out
