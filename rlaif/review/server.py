"""Serving the review app with uvicorn on a socket bound here (so the printed URL is the
real one, also with ``--port 0``), in the foreground or in a thread (tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, Sequence


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one); ``OSError`` with a clear message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app, sock: socket.socket):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def serve(app, sock: socket.socket) -> None:
    """Serve until interrupted (Ctrl-C)."""
    make_server(app, sock).run(sockets=[sock])


class BackgroundServer:
    """The app served from a thread; ``stop()`` ends it. For tests and benchmarks."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.url = url_of(self.sock)
        self.server = make_server(app, self.sock)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 20.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the review server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run(run_dir: str, host: str = "127.0.0.1", port: int = 8765, reviewer: str | None = None,
        allowed_hosts: Sequence[str] = (), print_fn: Callable[[str], None] | None = None,
        order: str = "queue", target: float = 0.10) -> int:
    """``rlaif review``: load the run, bind, print the URL (with the access secret off loopback), serve until Ctrl-C."""
    from rlaif.review.access import WILDCARD, Access
    from rlaif.review.app import create_app

    print_fn = print_fn or (lambda m: print(m, flush=True))
    access = Access.for_host(host, allowed_hosts)  # a bad --allowed-host raises ValueError before anything loads
    app = create_app(run_dir, default_reviewer=reviewer, access=access, order=order, target=target)
    state = app.state.review
    import gc

    gc.freeze()  # the loaded run lives as long as the server: keep it out of every later collection
    sock = bind(host, port)
    url = url_of(sock)
    if host.strip("[]") in WILDCARD:  # 0.0.0.0 is no address to open: name the machine instead
        url = f"http://{socket.gethostname()}:{sock.getsockname()[1]}/"
    print_fn(f"{len(state.pairs)} pairs from {run_dir}; ratings are stored in {state.store.path}")
    print_fn(f"order: {order}; the page says when the agreement's 95% interval is within +-{100 * target:g} points")
    if state.store.latest:
        print_fn(f"ratings already stored: {len(state.store.latest)} (damaged lines skipped: {state.store.skipped})")
    if access.secret:
        print_fn(f"listening on {host}: only those given this link can open it; it holds the server's access secret, "
                 "which is printed only here")
    print_fn(f"review at {access.link(url)}   (Ctrl-C stops)")
    if host.strip("[]") in WILDCARD:
        print_fn(f"(or put this machine's address in place of {socket.gethostname()}; other names need --allowed-host)")
    try:
        serve(app, sock)
    finally:
        sock.close()
    return 0
