"""dedupdask: duplicates, near-duplicates, outliers and broken images in webdataset archives, on Dask.

Examples
--------
>>> import dedupdask as ddk
>>> res = ddk.run("shards/", "work/")  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .galleries import (  # noqa: E402
    Gallery,
    create_components_gallery,
    create_duplicates_gallery,
    create_outliers_gallery,
    create_stats_gallery,
)
from .pipeline import ExtractReport, extract, run  # noqa: E402
from .results import DedupResult, load  # noqa: E402
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
    "DedupResult",
    "Gallery",
    "create_components_gallery",
    "create_duplicates_gallery",
    "create_outliers_gallery",
    "create_stats_gallery",
    "load",
]
