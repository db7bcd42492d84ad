"""rlaif: an RLAIF engine.

Constitutions live in plain files; rlaif turns them into critique-and-revise data, AI
preference labels and trained models. Importing this package has no side effects and
pulls in neither torch nor vLLM.
"""

__version__ = "0.1.0"
