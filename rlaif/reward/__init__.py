"""The reward room: every way rlaif turns a response into a number lives here.

* :mod:`rlaif.reward.functions`: programmatic rewards (``module:function``, e.g. a verifier) and
  the checked call every consumer makes (:func:`~rlaif.reward.functions.score`);
* :mod:`rlaif.reward.models`: a trained outcome reward model (``rlaif train rm``);
* :mod:`rlaif.reward.prm`: a trained process reward model (``rlaif train prm``): one score per
  step, aggregated into one per response (min, prod, last) or laid out as dense rewards;
* :mod:`rlaif.reward.implicit`: implicit step rewards of a DPO model against its reference;
* :mod:`rlaif.reward.judge`: the constitution judge asked pointwise (is this step, or this
  response, acceptable under principle P?), as step labels or as a reward.

The package sits below ``rlaif.pipeline`` and ``rlaif.train``: best-of-N, the step search, eval,
PPO and GRPO take their rewards from it, and it imports nothing from them (checked by
tests/test_architecture.py). Importing the package imports neither torch nor transformers.
"""
