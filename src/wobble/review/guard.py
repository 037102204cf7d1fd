"""What stands in front of the review app: a body size limit, a rate limit and sign-in lockouts.

`Guard` is ASGI middleware, so it acts before FastAPI parses a form or anyone is authenticated:
a body larger than `max_body_bytes` is refused (413) from its Content-Length, or, without one,
as soon as the bytes streamed in pass the limit, so a huge body is never read into memory. Each
source address may make `requests_per_minute` requests (429 with Retry-After beyond that), and
after `sign_in_failures` failed sign-ins from one address, signing in from it is locked for
`lockout_minutes`. Counters live in this process (one `wobble review serve`); behind several
workers, the proxy's own limits (docs/nginx-review.conf) are the first line.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

import anyio.to_thread

from wobble.core.config import Review

RefuseFn = Callable[[dict, int, str], None]  # (ASGI scope, status, reason): audits a refusal


class BodyTooLarge(Exception):
    """The request body passed the limit while it streamed in."""


class Limits:
    """Per-address request counts and sign-in failures, in a sliding window."""

    def __init__(self, settings: Review):
        self.settings = settings
        self._lock = threading.Lock()
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, address: str) -> float | None:
        """None if this request may go on; else seconds until it may."""
        now = time.monotonic()
        with self._lock:
            q = self._requests[address]
            while q and q[0] <= now - 60:
                q.popleft()
            if len(q) >= self.settings.requests_per_minute:
                return max(1.0, 60 - (now - q[0]))
            q.append(now)
            return None

    def locked_for(self, address: str) -> float | None:
        """Seconds this address is still locked out of signing in, or None."""
        window = self.settings.lockout_minutes * 60
        now = time.monotonic()
        with self._lock:
            q = self._failures[address]
            while q and q[0] <= now - window:
                q.popleft()
            if len(q) >= self.settings.sign_in_failures:
                return max(1.0, window - (now - q[-1]))
            return None

    def failed(self, address: str) -> None:
        with self._lock:
            self._failures[address].append(time.monotonic())


def client_address(scope: dict) -> str:
    """The source address (uvicorn puts the proxy's X-Forwarded-For here when the proxy is trusted)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


class Guard:
    """ASGI middleware: rate limit, then body size, before the app sees the request."""

    def __init__(self, app, *, settings: Review, limits: Limits, refuse: RefuseFn):
        self.app, self.max_bytes, self.limits, self.refuse = app, settings.max_body_bytes, limits, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        wait = self.limits.allow(client_address(scope))
        if wait is not None:
            await self._answer(scope, send, 429, "rate limited",
                               "Too many requests from your address: wait a minute and try again.",
                               retry_after=int(wait) + 1)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._answer(scope, send, 413, "body too large", "That request is too large to accept.")
            return
        received, started, over = 0, False, False

        async def limited_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if over:  # the app's answer to a body cut short (FastAPI makes it a 400) is replaced by the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        with contextlib.suppress(BodyTooLarge):  # answered just below
            await self.app(scope, limited_receive, tracking_send)
        if over and not started:
            await self._answer(scope, send, 413, "body too large", "That request is too large to accept.")

    async def _answer(self, scope, send, status: int, reason: str, text: str, retry_after: int | None = None):
        await anyio.to_thread.run_sync(self.refuse, scope, status, reason)
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store"),
                   (b"connection", b"close")]
        if retry_after:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": text.encode("utf-8")})
