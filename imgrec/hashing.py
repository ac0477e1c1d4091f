"""Deterministic fractions from text: the same string gives the same number in
[0, 1) on every machine and run, with no RNG state (data splits, chunk cuts)."""

from __future__ import annotations

import hashlib


def unit_hash(text: str) -> float:
    """The first 8 bytes of the SHA-1 of ``text`` as a fraction of 2**64."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2**64
