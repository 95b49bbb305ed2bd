"""The exceptions scdl_gpu raises.

Each subclasses the builtin a bionemo-scdl user already catches (``ValueError``,
``FileNotFoundError``), so code written against upstream keeps working.
"""

from __future__ import annotations


class ArchiveError(ValueError):
    """An archive on disk is inconsistent, truncated or not an SCDL archive."""


class ArchiveNotFoundError(ArchiveError, FileNotFoundError):
    """An archive, or a file it must contain, does not exist."""


class HeaderSerializationError(ArchiveError):
    """``header.sch`` cannot be encoded or decoded (same name as upstream's)."""


class ConversionError(ValueError):
    """An input file cannot be converted (unsupported layout, bad values)."""
