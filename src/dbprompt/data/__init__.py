"""Database readers: every supported layout becomes a list of Records, one per image."""

from .database import FORMATS, Database, detect_format, load_database
from .errors import BadInputReport, BadItem, DataError
from .images import check_image, open_image
from .readers import read_csv, read_imagefolder, read_karpathy
from .records import SPLITS, Record
from .splits import assign_splits, records_for

__all__ = [
    "FORMATS",
    "SPLITS",
    "BadInputReport",
    "BadItem",
    "DataError",
    "Database",
    "Record",
    "assign_splits",
    "check_image",
    "detect_format",
    "load_database",
    "open_image",
    "read_csv",
    "read_imagefolder",
    "read_karpathy",
    "records_for",
]
