"""Beaver-Guard-V (multi-level guard) and filter-and-regenerate (docs/design.md §7)."""

from .regenerate import SAFE_REFUSAL, Step, Trace, Verdict, filter_and_regenerate

__all__ = ["SAFE_REFUSAL", "Step", "Trace", "Verdict", "filter_and_regenerate"]
