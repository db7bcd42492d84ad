"""Models rlaif ships or fetches: the embedded default model and how names resolve to folders (model_zoo)."""
