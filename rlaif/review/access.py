"""Who may talk to the review server: the Host header, an access secret, the security headers.

Two attacks shape this module:

* **DNS rebinding.** A web page on ``evil.example`` points its name at the reviewer's machine
  (``127.0.0.1``, or the machine's network address); the page is then same-origin with the
  server in the browser's eyes, reads every pair and posts ratings. The request still says
  ``Host: evil.example``, so every request whose Host names something the server was not
  bound to or told about (``--allowed-host``) is refused with 421. A Host that is an IP
  address literal cannot be a rebound name, so a server bound to every address (``0.0.0.0``,
  ``::``) accepts those, besides ``localhost`` and this machine's own host names.
* **Anyone on the network.** Off loopback, the server asks for a secret: printed once at
  start inside the URL (``/?secret=...``, as Jupyter does with its token), turned into an
  HttpOnly, SameSite=Strict cookie by the first request that carries it (which is redirected
  to the same address without it, so it leaves the address bar), and checked on every request:
  without it a request gets 403 and nothing else. On loopback no secret is asked by default (the
  server is this machine's only), but :class:`Access` takes one for any address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import socket
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
     b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
WILDCARD = {"0.0.0.0", "::", ""}
SECRET_PARAM = "secret"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(header: str) -> str:
    """The name in a Host header, without port or brackets, lower-case ('' when it cannot be read)."""
    try:
        return (urlsplit(f"//{header}").hostname or "").lower()
    except ValueError:
        return ""


def check_allowed_host(name: str) -> str:
    """An ``--allowed-host`` value: a host name or address, without scheme, port or path."""
    clean = name.strip().lower().strip("[]")
    if not clean or (any(c in clean for c in "/ :@?#") and not _is_ip(clean)):
        raise ValueError(f"--allowed-host takes a host name or address (like review.lan or 10.0.0.5), not {name!r}")
    return clean


@dataclass(frozen=True)
class Access:
    """The names a request's Host may give, and the secret it must carry (None: none asked)."""

    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    secret: str | None = None
    names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        bound = self.host.lower().strip("[]")
        names = {bound, *(check_allowed_host(h) for h in self.allowed_hosts)}
        if is_loopback(bound):
            names.add("localhost")
            if bound == "localhost":
                names |= {"127.0.0.1", "::1"}
        if bound in WILDCARD:
            names.add("localhost")
            for own in (socket.gethostname(), socket.getfqdn()):
                names.add(own.lower())
        object.__setattr__(self, "names", frozenset(names - {""}))

    @classmethod
    def for_host(cls, host: str, allowed_hosts: Iterable[str] = ()) -> "Access":
        """What ``rlaif review --host HOST`` uses: a new secret off loopback, none on it."""
        return cls(host, tuple(allowed_hosts), None if is_loopback(host) else secrets.token_urlsafe(24))

    @property
    def cookie(self) -> str:
        """The secret's cookie name: one per secret, so two servers on one machine keep their own."""
        return "rlaif_access_" + hashlib.sha256((self.secret or "").encode()).hexdigest()[:12]

    def host_ok(self, header: str) -> bool:
        name = host_name(header)
        if name in self.names:
            return True
        return self.host.strip("[]") in WILDCARD and _is_ip(name)

    def secret_ok(self, given: str | None) -> bool:
        return self.secret is None or (given is not None and secrets.compare_digest(given.encode(), self.secret.encode()))

    def link(self, url: str) -> str:
        """The address to open: ``url`` with the secret, when there is one."""
        return f"{url}?{SECRET_PARAM}={self.secret}" if self.secret else url


async def _plain(send, status: int, text: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: the Host check, the secret, and the security headers on every response."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.access.host_ok(host):
            allowed = ", ".join(sorted(self.access.names))
            return await _plain(send, 421, f"refused: this review server answers to {allowed} (and the names given "
                                           f"with --allowed-host), not {host[:100]!r}\n")
        if self.access.secret is not None:
            query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            given = dict(query).get(SECRET_PARAM)
            if given is not None and self.access.secret_ok(given):
                if scope["method"] in ("GET", "HEAD"):  # keep it out of the address bar and history
                    rest = urlencode([(k, v) for k, v in query if k != SECRET_PARAM])
                    cookie = (f"{self.access.cookie}={self.access.secret}; Path=/; HttpOnly; SameSite=Strict").encode()
                    path = scope.get("raw_path") or scope["path"].encode()
                    target = path + (f"?{rest}".encode() if rest else b"")
                    return await _plain(send, 303, "", [(b"location", target), (b"set-cookie", cookie)])
            else:
                jar = SimpleCookie()
                try:
                    jar.load(headers.get(b"cookie", b"").decode("latin-1"))
                except Exception:  # noqa: BLE001 - a malformed cookie header is no secret
                    jar = SimpleCookie()
                morsel = jar.get(self.access.cookie)
                if not self.access.secret_ok(morsel.value if morsel else None):
                    return await _plain(send, 403, "refused: this review server needs its access link, the URL with "
                                                   "?secret=... that `rlaif review` printed when it started\n")

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["Access", "Guard", "SECURITY_HEADERS", "check_allowed_host", "host_name", "is_loopback"]
