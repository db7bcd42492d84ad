"""The error of :mod:`rlaif.models` (kept apart so that model_zoo.py and convert.py both raise it)."""


class ModelError(ValueError):
    """A model spec cannot be resolved, or the default model cannot be prepared."""
