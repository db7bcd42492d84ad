"""Start-up of an OpenAI-compatible server engine: which servers answer, which model they serve.

:class:`ServerModels` is the half of :class:`rlaif.engine.openai_server.OpenAIServerEngine` that
asks each server for its models (``GET /v1/models``) at start and on request: the model requests
ask for (given, or the server's first), the context length a vLLM server reports
(``max_model_len``), and the servers left out because they did not answer at start.
"""

from __future__ import annotations

import asyncio
from typing import Any

from rlaif.engine.failures import GaveUp, Permanent
from rlaif.engine.server_pool import Server, ServerPool


class ServerModels:
    """Model listing for an engine that has ``_request``, ``_run``, ``_pool`` and ``max_retries``."""

    model: str
    max_retries: int
    server_max_model_len: int | None
    _pool: ServerPool | None

    async def _list_models(self, server: Server, retries: int | None = None) -> list[dict[str, Any]]:
        try:
            data = await self._request("GET", "/v1/models", pin=server, retries=retries)
        except (Permanent, GaveUp) as exc:
            raise RuntimeError(f"cannot list the models of {server.url}: {exc}") from None
        models = [m for m in (data.get("data") or []) if isinstance(m, dict) and "id" in m]
        if not models:
            raise RuntimeError(f"{server.url}/v1/models lists no model")
        return models

    def _note_max_len(self, models: list[dict[str, Any]], name: str | None) -> None:
        for m in models:
            if m["id"] == name and isinstance(m.get("max_model_len"), int):
                self.server_max_model_len = m["max_model_len"]

    async def _start(self, model: str | None) -> str:
        """The model requests ask for; with several servers, each is asked for its models first."""
        assert self._pool is not None
        servers = list(self._pool.servers)
        if len(servers) == 1:
            if model is not None:
                return model
            models = await self._list_models(servers[0])
            self._note_max_len(models, models[0]["id"])
            return str(models[0]["id"])
        # One retry per server: a server that is down should not hold up the start for long.
        found = await asyncio.gather(*(self._list_models(s, retries=min(self.max_retries, 1)) for s in servers),
                                     return_exceptions=True)
        listed: dict[str, list[dict[str, Any]]] = {}
        down: dict[Server, str] = {}
        for server, got in zip(servers, found):
            if isinstance(got, RuntimeError):
                if model is None or "HTTP 404" not in str(got):  # 404: answers, but lists nothing (name used as given)
                    down[server] = str(got)
            elif isinstance(got, BaseException):
                raise got
            else:
                listed[server.url] = got
        if len(down) == len(servers) or (model is None and not listed):
            raise RuntimeError("no server answers: " + "; ".join(down.values()))
        for server, why in down.items():  # reported by the caller (``left_out``), e.g. the command line
            self._pool.leave_out(server, why)
        if model is None:
            model = str(next(iter(listed.values()))[0]["id"])
        for url, models in listed.items():
            names = [str(m["id"]) for m in models]
            if model not in names:
                raise RuntimeError(f"{url} does not serve a model named {model!r} (it serves {names}); "
                                   "every server in base_url must serve the same model")
            self._note_max_len(models, model)
        return model

    @property
    def left_out(self) -> dict[str, str]:
        """Servers that did not answer at start and get no requests, with the reason."""
        return dict(self._pool.left_out) if self._pool is not None else {}

    def served_models(self) -> list[str]:
        """The model names every server lists (``GET /v1/models``); RuntimeError when none can say."""
        assert self._pool is not None
        servers = list(self._pool.servers)

        async def all_lists():
            return await asyncio.gather(*(self._list_models(s) for s in servers), return_exceptions=True)

        lists = [got for got in self._run(all_lists()) if not isinstance(got, BaseException)]
        if not lists:
            return [str(m["id"]) for m in self._run(self._list_models(servers[0]))]  # raises the reason
        for models in lists:
            self._note_max_len(models, self.model)
        common = set.intersection(*({str(m["id"]) for m in ms} for ms in lists))
        return [str(m["id"]) for m in lists[0] if str(m["id"]) in common]


__all__ = ["ServerModels"]
