"""The gate every request passes first: Host, Origin, body size, and the admin surface.

A pure ASGI middleware, so it costs a few dictionary lookups per request and
never buffers a body or a stream.

- Host: only localhost, IP literals and the names in --allowed-hosts. A DNS
  rebinding attack needs its own name in Host, so that name is refused
  (Ollama's CVE-2024-28224).
- Origin: a browser request from another origin is refused unless the part of the
  gateway it calls accepts that origin (access.origins: the model API fronts take
  Ollama's default origins and --cors-origins; the admin API and the dashboard only
  --admin-origins). An accepted origin gets CORS headers naming it (never `*`); only an
  admin origin gets them with credentials, and elsewhere a cross-origin request's
  cookies are dropped, so the admin session never rides on one. A refusal names, in its
  Access-Control-Allow-Origin header, the setting that would let the origin in: that
  value is what a browser's console prints.
- Body: a declared length over --max-body is refused before reading; a chunked
  body is cut off when it passes the limit.
- Admin: /api/v1/admin/* and the dashboard page need the admin token (`/` only when a
  browser asks for HTML: to anything else it answers as Ollama's `/` does), as
  `Authorization: Bearer`, as the session cookie, or once as `?token=` (which
  sets the cookie and redirects to the same URL without it).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calls.errors import CallError

from .keys import AdminToken
from .origins import OriginPolicy, Rule

# How a refusal looks on the wire for a path: (content type, body). Each front answers in its
# own error shape, and the app knows which front owns a path; the guard does not.
Render = Callable[[str, CallError], tuple[bytes, bytes]]

SESSION_COOKIE = "ohost_admin"
ADMIN_PREFIXES = ("/api/v1/admin",)
ADMIN_PAGES = frozenset({"/", "/dashboard", "/metrics"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
_EXPOSED = b"X-Request-Id, X-Next-Cursor, Link, Retry-After"
_METHODS = b"GET, HEAD, POST, PATCH, DELETE"
# What a refusal puts in Access-Control-Allow-Origin, by the setting that would let the origin
# in. It can never equal an origin, so the browser refuses; and it prints the value in its
# console ("... has a value 'origin-not-allowed:...' that is not equal to the supplied origin"),
# where a refusal without the header shows only "No 'Access-Control-Allow-Origin' header".
# No spaces: Chrome reads a value with spaces as several and prints it less plainly.
_REFUSED = {
    "--cors-origins": b"origin-not-allowed:add-it-to--cors-origins",
    "--admin-origins": b"origin-not-allowed:the-admin-API-needs-it-in--admin-origins",
}


def is_admin_path(path: str) -> bool:
    return path in ADMIN_PAGES or path.startswith(ADMIN_PREFIXES)


def wants_page(method: str, accept: bytes) -> bool:
    """Whether a request for `/` is a browser's, for the dashboard. Anything else is a client
    probing for Ollama (as Ollama's own `/` answers), which needs no token."""
    return method != "HEAD" and b"text/html" in accept


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    # Cached: clients keep sending the same Host, and parsing it showed per request.
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def host_name(host_header: str) -> str:
    """`example.com:5000` -> `example.com`; `[::1]:5000` -> `[::1]`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def session_of(cookie_header: str) -> str | None:
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(cookie_header)
    except KeyError:  # SimpleCookie's way of saying a cookie name is illegal
        return None
    morsel = cookies.get(SESSION_COOKIE)
    return morsel.value if morsel else None


async def _respond(
    send: Send,
    render: Render,
    path: str,
    error: CallError,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    content_type, body = render(path, error)
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    headers += list(extra)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        render: Render,
        admin: AdminToken,
        allowed_hosts: Iterable[str] = (),
        origins: OriginPolicy | None = None,
        max_body: int = 1_048_576,
    ) -> None:
        self.app = app
        self.render = render
        self.admin = admin
        self.hosts = frozenset(h.lower() for h in allowed_hosts) | _LOOPBACK_NAMES
        self.origins = origins or OriginPolicy()
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.hosts and not _is_ip(host) and "*" not in self.hosts:
            await _respond(
                send,
                self.render,
                scope["path"],
                CallError(
                    403,
                    "host_not_allowed",
                    f"the Host {host!r} is not allowed; "
                    "add it with --allowed-hosts if clients really use that name",
                ),
            )
            return

        path = scope["path"]
        admin = is_admin_path(path) and (
            path != "/" or wants_page(scope["method"], headers.get(b"accept", b""))
        )
        cors: list[tuple[bytes, bytes]] = []
        origin = headers.get(b"origin")
        if origin is None and headers.get(b"sec-fetch-site") in (b"cross-site", b"same-site"):
            # Browsers send no Origin on a no-cors GET (<img src>, <script src>), but do say
            # where it comes from. Only a plain navigation to a page may come from elsewhere;
            # nothing that asks, or reads the admin surface, may.
            navigating = (
                scope["method"] in ("GET", "HEAD")
                and headers.get(b"sec-fetch-mode") == b"navigate"
                and not scope["path"].startswith("/api/")
            )
            if not navigating:
                await _respond(
                    send,
                    self.render,
                    scope["path"],
                    CallError(
                        403,
                        "origin_not_allowed",
                        "a request from another site must come with an allowed Origin; "
                        "add the origin with --cors-origins",
                    ),
                )
                return
        if origin is not None:
            own = f"{scope.get('scheme', 'http')}://{headers.get(b'host', b'').decode('latin-1')}"
            origin_text = origin.decode("latin-1").rstrip("/")
            if origin_text != own:
                rule = self.origins.rule_for(path, admin=admin)
                if origin_text not in rule.origins:
                    await self._refuse_origin(send, path, origin_text, rule)
                    return
                cors = [
                    (b"access-control-allow-origin", origin),
                    (b"access-control-expose-headers", _EXPOSED),
                    (b"vary", b"Origin"),
                ]
                if rule.credentials:
                    cors.append((b"access-control-allow-credentials", b"true"))
                else:
                    # A page on another origin of the same site (another port of localhost)
                    # gets the SameSite=Strict admin cookie sent along if it asks with
                    # credentials: the call must not be the admin's.
                    scope = {
                        **scope,
                        "headers": [(k, v) for k, v in scope["headers"] if k != b"cookie"],
                    }
                    headers.pop(b"cookie", None)
                if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                    await self._preflight(send, cors, headers)
                    return

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _respond(send, self.render, scope["path"], self._too_large(), cors)
            return

        if admin:
            done = await self._admin(scope, headers, send, cors)
            if done:
                return

        if cors:
            send = self._with_headers(send, cors)
        await self.app(scope, self._limited(receive), send)

    async def _refuse_origin(self, send: Send, path: str, origin: str, rule: Rule) -> None:
        where = (
            "the admin API and the dashboard take calls from another origin only if "
            "--admin-origins lists it"
            if rule.setting == "--admin-origins"
            else "add the origin (or a pattern, as in OLLAMA_ORIGINS) with --cors-origins"
        )
        # Printable ASCII only: the origin is the client's, and the message goes into a body.
        shown = "".join(c for c in origin[:200] if " " <= c <= "~")
        await _respond(
            send,
            self.render,
            path,
            CallError(403, "origin_not_allowed", f"requests from {shown} are not allowed; {where}"),
            [(b"access-control-allow-origin", _REFUSED[rule.setting]), (b"vary", b"Origin")],
        )

    def _too_large(self) -> CallError:
        return CallError(
            413, "body_too_large", f"the request body is larger than {self.max_body} bytes"
        )

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise self._too_large()
            return message

        return limited

    @staticmethod
    def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return sending

    @staticmethod
    async def _preflight(
        send: Send, cors: list[tuple[bytes, bytes]], headers: dict[bytes, bytes]
    ) -> None:
        allow = [
            *cors,
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-allow-headers", headers.get(b"access-control-request-headers", b"")),
            (b"access-control-max-age", b"600"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": allow})
        await send({"type": "http.response.body", "body": b""})

    async def _admin(
        self, scope: Scope, headers: dict[bytes, bytes], send: Send, cors: list[tuple[bytes, bytes]]
    ) -> bool:
        """Check the admin token; True when a response was already sent."""
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer" and self.admin.check_token(credential.strip()):
            return False
        session = session_of(headers.get(b"cookie", b"").decode("latin-1"))
        if session and self.admin.check_session(session):
            return False
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        token = next((value for name, value in query if name == "token"), None)
        if token and scope["method"] in ("GET", "HEAD") and self.admin.check_token(token):
            # Trade the token for a cookie, and take it out of the address bar.
            rest = urlencode([(name, value) for name, value in query if name != "token"])
            location = scope["path"] + (f"?{rest}" if rest else "")
            secure = "; Secure" if scope.get("scheme") == "https" else ""
            cookie = (
                f"{SESSION_COOKIE}={self.admin.session}; Path=/; HttpOnly; SameSite=Strict{secure}"
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [
                        (b"location", location.encode()),
                        (b"set-cookie", cookie.encode()),
                        (b"content-length", b"0"),
                        *cors,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return True
        await _respond(
            send,
            self.render,
            scope["path"],
            CallError(
                401,
                "unauthorized",
                "this is the admin surface: send `Authorization: Bearer <admin token>`, "
                "or open the URL with ?token= that the gateway printed when it first started",
                headers={"WWW-Authenticate": "Bearer"},
            ),
            cors,
        )
        return True
