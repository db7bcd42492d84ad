"""The engines a command starts or connects to, shared by the command modules.

Kept apart from ``commands.py`` so that the subcommand modules (``bon.py``, ``eval.py``,
``try_.py``, ...) that ``commands.py`` calls need not import it back: every import points one way.
"""

from __future__ import annotations

import sys

from rlaif.cli.errors import UserError


def make_engine_factory(e, model_id: str | None, seed: int, quiet: bool, *, base_url: str | None = None, share: float = 1.0,
                        tensor_parallel: int = 1):
    """A function that starts the configured engine (called only when there is work).

    ``model_id`` is a resolved model folder or hub id, or for the openai backend the model's
    name on the server (None: the server's first). ``base_url`` replaces ``e.base_url`` (a
    feedback model on its own server); ``share`` divides vLLM's default memory share when
    two in-process engines (policy and feedback model) run side by side; ``tensor_parallel``: vLLM
    over that many GPUs (a Ray replica that reserves several).
    """

    def factory():
        import dataclasses

        from rlaif.engine import create_engine

        cfg = dataclasses.replace(e, **({"base_url": base_url} if base_url else {}),
                                  **({"tensor_parallel_size": tensor_parallel} if tensor_parallel > 1 and e.backend == "vllm" else {}))
        return create_engine(model_id, cfg, seed=seed, show_progress=not quiet, share=share)

    return factory


def connect_server(e, name: str | None, quiet: bool, base_url: str | None = None):
    """A client of the openai backend's server (cheap: no model is loaded). Its ``model`` is the
    name the server serves, which is what the run's settings record; a name the server does not
    list is refused here rather than failing every request."""
    try:
        engine = make_engine_factory(e, name, 0, quiet, base_url=base_url)()
    except (RuntimeError, ValueError) as exc:  # unreachable server, bad URL
        raise UserError(str(exc)) from None
    for url, why in getattr(engine, "left_out", {}).items():
        print(f"rlaif: {why}; that server is left out of this run, the others share its requests", file=sys.stderr)
    if name is not None:
        try:
            served = engine.served_models()
        except RuntimeError:
            served = None  # a server that does not list its models: the name is used as given
        if served is not None and name not in served:
            engine.close()
            raise UserError(f"{engine.base_url} does not serve a model named {name!r}; it serves {served}")
    return engine


def model_name(model: str | None) -> str | None:
    """``--model`` as a served name for the openai backend: None for 'default' (the server's first model)."""
    return None if model in (None, "", "default") else model
