"""The review web app: Starlette routes over a run's pairs, Jinja2 pages, files in static/.

Pages: ``/`` asks for the reviewer's name; ``/pair/{i}`` shows pair i (0-based) blind, in
the reviewer's left/right order; ``/stats`` is the statistics panel as an HTML fragment
(the page refreshes it after each rating); ``/next`` and ``/prev`` move through the order the
server was started with (:mod:`rlaif.review.queue`: the queue by default, or the file's
order). Posts: ``/api/rate`` (JSON, from the page's script) and ``/rate`` (a plain form post,
for browsers without scripts). ``/api/stats`` serves the numbers as JSON.

Posts are refused unless they carry the page's token (a random value per server, so a
page of another site cannot post into a local server) and, when the browser sends an
``Origin``, come from this server's own origin. Requests naming a host the server was not
bound to or told about are refused (DNS rebinding), and off loopback every request must carry
the server's access secret (:mod:`rlaif.review.access`). Every page is served with a content
security policy that allows only this server's own files.
"""

from __future__ import annotations

import gc
import json
import secrets
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, unquote, urlsplit

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rlaif.review.access import Access, Guard
from rlaif.review.data import FLAGS, Pair, ReviewStore, SubmissionError, check_reviewer, left_is_chosen, load_pairs, parse_submission
from rlaif.review.queue import ORDERS, ReviewQueue
from rlaif.review.stats import LiveStats, progress

HERE = Path(__file__).parent
MAX_BODY = 64 * 1024
COOKIE = "rlaif_reviewer"
LIKERT_TITLES = {
    1: "left much better", 2: "left better", 3: "left slightly better", 4: "left negligibly better",
    5: "right negligibly better", 6: "right slightly better", 7: "right better", 8: "right much better",
}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


class ReviewApp:
    """The state of one review server: the pairs, the ratings store, the page token."""

    def __init__(self, run: str | Path, default_reviewer: str | None = None, log: Callable[[str], None] | None = None,
                 order: str = "queue", target: float = 0.10):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
        if not 0 < target < 0.5:
            raise ValueError(f"the target interval must be between 0 and +-50 points, not +-{100 * target:g}")
        self.log = log or (lambda m: print(m, file=sys.stderr))
        self.run = Path(run)
        self.order, self.target = order, target
        self.load_warnings: list[str] = []

        def note(msg: str) -> None:
            self.load_warnings.append(msg.removeprefix("warning: "))
            self.log(msg)

        # Loading makes a few hundred thousand objects and no reference cycles: the cyclic
        # garbage collector would only scan them again and again (a third of the load time).
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            self.pairs: list[Pair] = load_pairs(self.run, log=note)
            self.by_id = {p.id: p for p in self.pairs}
            self.live = LiveStats(self.by_id)
            self.queue = ReviewQueue(self.pairs)

            def counted(review) -> None:
                self.live.update(review)
                self.queue.update(review)

            self.store = ReviewStore(self.run / "reviews.jsonl", self.by_id, log=self.log, listener=counted)
        finally:
            if gc_was_on:
                gc.enable()
        self.token = secrets.token_urlsafe(24)
        self.default_reviewer = check_reviewer(default_reviewer) if default_reviewer else None
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
        self.env.filters["pct"] = _pct
        self.env.filters["num"] = _num
        self._stats: tuple[int, dict] | None = None

    # ------------------------------------------------------------ helpers

    def stats(self) -> dict[str, Any]:
        self.store.refresh()
        if self._stats is None or self._stats[0] != self.store.version:
            snap = self.live.snapshot()
            snap["progress"] = progress(snap["random"], self.target)
            self._stats = (self.store.version, snap)
        return self._stats[1]

    def render(self, name: str, status: int = 200, **ctx) -> HTMLResponse:
        ctx.setdefault("warnings", self.load_warnings + self.store.warnings)
        html = self.env.get_template(name).render(run_name=self.run.name, token=self.token, flag_labels=FLAGS, **ctx)
        return HTMLResponse(html, status)

    def reviewer_of(self, request: Request) -> str | None:
        for value in (request.query_params.get("reviewer"), unquote(request.cookies.get(COOKIE, "")) or None, self.default_reviewer):
            if value:
                try:
                    return check_reviewer(value)
                except ValueError:
                    continue
        return None

    def next_unrated(self, reviewer: str, after: int = -1) -> int:
        return self.queue.next_after(reviewer, after, self.order)

    def _with_cookie(self, response: Response, reviewer: str) -> Response:
        response.set_cookie(COOKIE, quote(reviewer), httponly=True, samesite="strict")
        return response

    # ------------------------------------------------------------ pages

    async def home(self, request: Request) -> Response:
        reviewer = self.reviewer_of(request)
        bad = request.query_params.get("reviewer")
        error = None
        if bad is not None and reviewer != bad:
            try:
                check_reviewer(bad)
            except ValueError as exc:
                error = str(exc)
        if reviewer and not error and request.query_params.get("change") is None:
            self.store.refresh()
            target = RedirectResponse(f"/pair/{self.next_unrated(reviewer)}", 303)
            return self._with_cookie(target, reviewer)
        return self.render("start.html", 422 if error else 200, reviewer=reviewer or "", error=error, total=len(self.pairs))

    async def next(self, request: Request) -> Response:
        reviewer = self.reviewer_of(request)
        if not reviewer:
            return RedirectResponse("/", 303)
        try:
            after = int(request.query_params.get("after", "-1"))
        except ValueError:
            after = -1
        self.store.refresh()
        return RedirectResponse(f"/pair/{self.next_unrated(reviewer, after)}", 303)

    async def prev(self, request: Request) -> Response:
        """Queue order: the pair this reviewer rated last before pair ``before`` (by rating time)."""
        reviewer = self.reviewer_of(request)
        if not reviewer:
            return RedirectResponse("/", 303)
        try:
            before = int(request.query_params.get("before", "-1"))
        except ValueError:
            before = -1
        self.store.refresh()
        target = self.queue.previous(reviewer, before)
        return RedirectResponse(f"/pair/{target}", 303)

    async def pair(self, request: Request) -> Response:
        reviewer = self.reviewer_of(request)
        if not reviewer:
            return RedirectResponse("/", 303)
        i = request.path_params["index"]
        if not 0 <= i < len(self.pairs):
            return self.render("message.html", 404, title="No such pair",
                               message=f"There is no pair {i + 1}: this run has {len(self.pairs)} pairs.")
        pair = self.pairs[i]
        stats = self.stats()  # refreshes the store too
        left_chosen = left_is_chosen(pair.id, reviewer)
        current = self.store.latest.get((reviewer, pair.id))
        shown = None
        if current:
            shown = {
                "rating": current.rating_shown, "comment": current.comment, "time": current.time,
                "flags_left": current.flags_chosen if left_chosen else current.flags_rejected,
                "flags_right": current.flags_rejected if left_chosen else current.flags_chosen,
            }
        mine = self.live.reviewers.get(reviewer, 0)
        response = self.render(
            "pair.html", pair=pair, index=i, total=len(self.pairs), reviewer=reviewer,
            left_text=pair.chosen if left_chosen else pair.rejected,
            right_text=pair.rejected if left_chosen else pair.chosen,
            current=shown, flags=FLAGS, likert_titles=LIKERT_TITLES, mine=mine,
            submission_id=secrets.token_urlsafe(12), s=stats,
            prev_index=(i - 1) % len(self.pairs), next_index=(i + 1) % len(self.pairs), order=self.order,
        )
        return self._with_cookie(response, reviewer)

    async def stats_fragment(self, request: Request) -> Response:
        return self.render("stats.html", s=self.stats())

    async def stats_json(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def token_json(self, request: Request) -> Response:
        # Same-origin pages can read this; other sites' pages cannot (no CORS headers).
        return JSONResponse({"token": self.token})

    # ------------------------------------------------------------ posts

    async def _read_post(self, request: Request, kind: str) -> dict[str, Any]:
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
            raise SubmissionError(403, f"cross-origin post from {origin[:100]!r} refused")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        want = "application/json" if kind == "json" else "application/x-www-form-urlencoded"
        if ctype != want:
            raise SubmissionError(415, f"expected a {want} body, got {ctype or 'none'!r}")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            raise SubmissionError(413, f"request body over {MAX_BODY} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise SubmissionError(413, f"request body over {MAX_BODY} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SubmissionError(400, "request body is not UTF-8") from None
        if kind == "json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                raise SubmissionError(400, "request body is not valid JSON") from None
            if not isinstance(data, dict):
                raise SubmissionError(400, "request body must be a JSON object")
        else:
            fields = parse_qs(text, keep_blank_values=True)
            data = {}
            for key, values in fields.items():
                if key.startswith("flags_"):
                    data[key] = values
                elif len(values) > 1:
                    raise SubmissionError(422, f"field {key[:40]!r} given more than once")
                else:
                    data[key] = values[0]
        token = data.get("token")
        if not isinstance(token, str) or not secrets.compare_digest(token.encode(), self.token.encode()):
            raise SubmissionError(403, "missing or stale page token: reload the page", code="token")
        return data

    async def rate_json(self, request: Request) -> Response:
        try:
            data = await self._read_post(request, "json")
            review = parse_submission(data, self.by_id)
        except SubmissionError as exc:
            return JSONResponse({"ok": False, "error": str(exc), "code": exc.code}, exc.status)
        written = self.store.append(review)
        return JSONResponse({"ok": True, "duplicate": not written, "time": self.store.seen.get(review.submission_id, review.time),
                             "reviewed": self.stats_light(review.reviewer)})

    def stats_light(self, reviewer: str) -> int:
        """How many pairs this reviewer has rated."""
        return self.live.reviewers.get(reviewer, 0)

    async def rate_form(self, request: Request) -> Response:
        try:
            data = await self._read_post(request, "form")
            review = parse_submission(data, self.by_id)
        except SubmissionError as exc:
            return PlainTextResponse(f"rating not stored: {exc}\n", exc.status)
        self.store.append(review)
        index = self.by_id[review.pair_id].index
        return self._with_cookie(RedirectResponse(f"/pair/{index}", 303), review.reviewer)


def create_app(run: str | Path, default_reviewer: str | None = None, access: Access | None = None,
               log: Callable[[str], None] | None = None, order: str = "queue", target: float = 0.10):
    """The ASGI app for reviewing ``run`` (raises :class:`ReviewError` for a bad run folder).

    ``access``: the Host names and secret requests need (default: a server on 127.0.0.1, no
    secret). ``order``: "queue" (:mod:`rlaif.review.queue`) or "file"; ``target``: the half-width
    of the agreement interval at which the page says the ratings are enough. The
    :class:`ReviewApp` is at ``app.state.review``.
    """
    state = ReviewApp(run, default_reviewer=default_reviewer, log=log, order=order, target=target)
    routes = [
        Route("/", state.home),
        Route("/next", state.next),
        Route("/prev", state.prev),
        Route("/pair/{index:int}", state.pair),
        Route("/stats", state.stats_fragment),
        Route("/api/stats", state.stats_json),
        Route("/api/token", state.token_json),
        Route("/api/rate", state.rate_json, methods=["POST"]),
        Route("/rate", state.rate_form, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    inner = Starlette(routes=routes)
    inner.state.review = state
    app = Guard(inner, access or Access())
    app.state = inner.state  # type: ignore[attr-defined]
    return app
