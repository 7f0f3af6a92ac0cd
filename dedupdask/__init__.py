"""dedupdask: duplicates, near-duplicates, outliers and broken images in webdataset archives, on Dask.

Examples
--------
>>> import dedupdask as ddk
>>> res = ddk.run("shards/", "work/")  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .pipeline import ExtractReport, extract, run  # noqa: E402
from .sources import list_sources  # noqa: E402
from .store import load_binary_feature, save_binary_feature  # noqa: E402

__all__ = [
    "__version__",
    "ExtractReport",
    "RunConfig",
    "extract",
    "list_sources",
    "load_binary_feature",
    "run",
    "save_binary_feature",
]
