"""Database readers: every supported layout becomes a list of Records, one per image."""

from .database import FORMATS, Database, ReadOptions, detect_format, load_database, read_database
from .errors import BadInputReport, BadItem, DataError
from .images import open_image
from .readers import read_csv, read_imagefolder, read_karpathy
from .records import SPLITS, Record
from .splits import SplitConfig, assign_splits, records_for, split_records

__all__ = [
    "FORMATS",
    "SPLITS",
    "BadInputReport",
    "BadItem",
    "DataError",
    "Database",
    "ReadOptions",
    "Record",
    "SplitConfig",
    "assign_splits",
    "detect_format",
    "load_database",
    "open_image",
    "read_csv",
    "read_database",
    "read_imagefolder",
    "read_karpathy",
    "records_for",
    "split_records",
]
