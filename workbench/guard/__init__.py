"""Beaver-Guard-V (multi-level guard) and filter-and-regenerate (DESIGN §7)."""

from .regenerate import SAFE_REFUSAL, Step, Trace, Verdict, filter_and_regenerate

__all__ = ["SAFE_REFUSAL", "Step", "Trace", "Verdict", "filter_and_regenerate"]
