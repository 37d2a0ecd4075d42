"""Data: the BeaverTails-V schema, the synthetic safety world, real-file loading, the gold
oracle."""

from .oracle import GoldScore, gold_score
from .schema import CATEGORIES, NO_CATEGORY, SEVERITY_LEVELS, RecordError, validate_record
from .store import DataSplits, load_data

__all__ = [
    "CATEGORIES",
    "NO_CATEGORY",
    "SEVERITY_LEVELS",
    "RecordError",
    "validate_record",
    "GoldScore",
    "gold_score",
    "DataSplits",
    "load_data",
]
