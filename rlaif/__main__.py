"""``python -m rlaif``: the same as the ``rlaif`` command."""

import sys

from rlaif.cli import main

if __name__ == "__main__":  # vLLM spawns processes: keep the entry point guarded
    sys.exit(main())
