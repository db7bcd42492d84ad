"""Seeds derived from names: the one rule every stage (critique, labels, best-of-N, PPO) samples by."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any parts: the same parts always give the same seed.

    Seeds derive from (run seed, prompt id, sample, stage, round), never from a position
    in a batch, so a chunk regenerated after a crash is identical to the lost one.
    """
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
