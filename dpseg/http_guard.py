"""The demo server's front door: an ASGI middleware that every HTTP request passes before any route sees it.

* **Same origin only.** A request carrying an ``Origin`` header (every browser POST does, and every cross-origin
  fetch) must come from the page's own origin (``Origin`` host:port == ``Host``); anything else, including
  ``Origin: null`` (sandboxed frames, ``file://`` pages), is refused with 403. A malicious web page open in the
  same browser therefore cannot drive the demo (cross-site request forgery). Clients that send no ``Origin``
  (curl, ``gradio_client``) are not browsers acting for another site and pass.
* **Loopback names only** while the server listens on loopback (``allowed_hosts``): a request whose ``Host`` is
  another name is refused (403), so a DNS-rebinding page cannot reach it through a name of its own.
* **Every body is capped.** A declared ``Content-Length`` above the route's limit is refused with 413 before a
  byte is read; a body without one (chunked) is counted as it arrives and cut off at the limit, also with 413.
  Upload routes get the upload limit, every other route a small one (:data:`BODY_LIMIT`): the page's own requests
  are a few kilobytes of JSON, so a 300 MB JSON body can no longer make the server hold 300 MB.

Plain ASGI (no web framework imported), so it is cheap to import and easy to test with a fake app.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Optional
from urllib.parse import urlsplit

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_LIMIT = 1 << 20  # bytes of any request that is not an upload (the page's JSON requests are kilobytes)
UPLOAD_OVERHEAD = 1 << 16  # multipart headers and boundaries around an upload's bytes
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_name(host: str) -> str:
    """'127.0.0.1:7860' -> '127.0.0.1', '[::1]:7860' -> '::1' (lower case)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    """The middleware of the module doc. ``upload_limit``: bytes of an upload's file (the demo's
    ``--max-upload-mb``); ``upload_paths``: path suffixes of the upload routes; ``allowed_hosts``: host names a
    request may address (None = any, for a server listening on every interface)."""

    def __init__(
        self,
        app: ASGIApp,
        upload_limit: int,
        upload_paths: Iterable[str] = ("/upload",),
        body_limit: int = BODY_LIMIT,
        allowed_hosts: Optional[Iterable[str]] = LOOPBACK_HOSTS,
    ) -> None:
        self.app = app
        self.upload_limit = int(upload_limit) + UPLOAD_OVERHEAD
        self.upload_paths = tuple(upload_paths)
        self.body_limit = int(body_limit)
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    def refusal(self, scope: Scope) -> Optional[tuple[int, str]]:
        """(status, reason) if the request is refused by its headers alone, else None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _host_name(host) not in self.allowed_hosts:
            return 403, "this demo answers only requests addressed to this machine (127.0.0.1 / localhost)"
        origin = headers.get("origin")
        if origin is not None:
            netloc = urlsplit(origin).netloc.lower() if "://" in origin else ""
            if not netloc or netloc != host.strip().lower():
                return 403, "cross-origin request refused: this demo accepts requests from its own page only"
        if scope["type"] == "http":
            length = headers.get("content-length")
            if length is not None:
                if not length.strip().isdigit():
                    return 400, "invalid Content-Length"
                limit = self.limit(scope)
                if int(length) > limit:
                    return 413, f"request body of {int(length):,} bytes is above this route's limit of {limit:,}"
        return None

    def limit(self, scope: Scope) -> int:
        path = scope.get("path", "")
        return self.upload_limit if path.endswith(self.upload_paths) else self.body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refused = self.refusal(scope)
        if refused is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _respond(send, *refused)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        await self._capped(scope, receive, send)

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with the body counted as it arrives: past the limit the app sees a disconnect and the client
        gets 413 (unless the app had already started its response)."""
        limit = self.limit(scope)
        state: dict[str, Any] = {"bytes": 0, "over": False, "started": False}

        async def counted_receive() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:  # the app's reaction to the cut-off body is replaced by the 413 below
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await _respond(send, 413, f"request body above this route's limit of {limit:,} bytes")


async def _respond(send: Send, status: int, reason: str) -> None:
    body = reason.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
