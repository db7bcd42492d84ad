"""``rlaif review RUN``: human spot-checks of a run's AI preference labels in the browser.

- :mod:`rlaif.review.data`: the run's pairs, the blind left/right order, and the
  append-only ``reviews.jsonl`` store (one fsynced line per rating).
- :mod:`rlaif.review.stats`: pure functions from pairs and ratings to the live numbers
  (agreement of the AI label with the humans, calibration, inter-reviewer agreement).
- :mod:`rlaif.review.app`: the Starlette app, its Jinja2 templates and static files.

Nothing here imports torch or vLLM; the web packages are imported only by ``app``.
"""
