"""Requests a web page could make behind the user's back are refused.

A service on ``127.0.0.1`` with no key is reachable from every page the user's browser
opens: a multipart POST needs no CORS preflight, so any site can make the browser send
images to ``/predict``; and by DNS rebinding (a site's name re-pointed at 127.0.0.1) a page
can even read the answers, since the browser then thinks they come from that site. Two
checks stop both, as Jupyter does for its local server:

- **Host**: the ``Host`` header must name this server: ``localhost``, ``127.0.0.1``,
  ``::1``, the address it listens on, and the names ``allowed_hosts`` adds (a reverse
  proxy's); ``*`` turns the check off. Listening on every interface (0.0.0.0) with no
  names given, any name is answered (the machine's names are unknown here).
  A rebound name (``attacker.example``) fails it.
- **Origin**: a request that says where it comes from (browsers send ``Origin`` on every
  POST and every cross-site request) must come from this server's own pages, or from an
  origin in ``cors_origins``. Clients that are not browsers (curl, Python) send none and
  are not affected.

The refusal is a 403 with a JSON ``{"error": ...}`` body, like every other refusal. The
camera's WebSocket (``/camera``) is checked the same way (browsers send ``Origin`` on every
WebSocket handshake, and no CORS rule protects one): a refused handshake gets a 403.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(listen: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The host names a server listening on ``listen`` answers to: the loopback names and
    the address itself, plus ``extra``. On every interface (0.0.0.0) the names are unknown
    here, so without ``extra`` any name is answered."""
    extra = tuple(extra)
    if listen in ("0.0.0.0", "::", ""):
        return (*LOOPBACK_NAMES, *extra) if extra else ("*",)
    own = () if listen in LOOPBACK_NAMES else (listen,)
    return (*LOOPBACK_NAMES, *own, *extra)


def normal_origin(origin: str) -> str:
    """An origin as browsers send it: lower case, no trailing slash."""
    return origin.strip().lower().rstrip("/")


def host_name(value: str) -> str:
    """``Host`` header → host name, lower case, without port or IPv6 brackets."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class BrowserGuard:
    """ASGI middleware: refuses foreign ``Host`` and ``Origin`` headers (see the module)."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str], origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = {h.lower().strip("[]") for h in hosts}
        self.origins = {normal_origin(o) for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            problem = self.problem(
                {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            )
            if problem:
                if scope["type"] == "http":
                    await JSONResponse({"error": problem}, 403)(scope, receive, send)
                else:  # a WebSocket closed before it is accepted: the handshake gets 403
                    await receive()  # websocket.connect
                    await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
                return
        await self.app(scope, receive, send)

    def problem(self, headers: dict[str, str]) -> str | None:
        host = headers.get("host", "")
        if "*" not in self.hosts and host_name(host) not in self.hosts:
            return (
                f"this server does not answer to the host name {host_name(host)!r} (a foreign "
                "Host header: DNS rebinding?); allow it with pixelseg serve --allowed-hosts"
            )
        origin = headers.get("origin")
        if origin is None:
            return None
        if normal_origin(origin) in self.origins or "*" in self.origins:
            return None
        parts = urlsplit(origin)
        if origin != "null" and parts.netloc.lower() == host.strip().lower():
            return None  # this server's own page
        return (
            f"requests from pages of {origin} are refused; allow that site with pixelseg "
            "serve --cors-origins"
        )
