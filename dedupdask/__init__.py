"""dedupdask: duplicates, near-duplicates, outliers and broken images in webdataset archives, on Dask.

Examples
--------
>>> import dedupdask as ddk
>>> res = ddk.run("shards/", "work/")  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use: ``import dedupdask`` stays fast (a CLI's --help, a Dask worker that
# only scores pixels), and dask.dataframe / pyarrow load only when a run needs them.
_LAZY = {
    "RunConfig": "config",
    "Gallery": "galleries",
    "create_components_gallery": "galleries",
    "create_duplicates_gallery": "galleries",
    "create_outliers_gallery": "galleries",
    "create_stats_gallery": "galleries",
    "ExtractReport": "pipeline",
    "extract": "pipeline",
    "run": "pipeline",
    "DedupResult": "results",
    "load": "results",
    "list_sources": "sources",
    "load_binary_feature": "store",
    "save_binary_feature": "store",
    "WorkDirError": "store",
}

if TYPE_CHECKING:  # pragma: no cover
    from .config import RunConfig
    from .galleries import (
        Gallery,
        create_components_gallery,
        create_duplicates_gallery,
        create_outliers_gallery,
        create_stats_gallery,
    )
    from .pipeline import ExtractReport, extract, run
    from .results import DedupResult, load
    from .sources import list_sources
    from .store import WorkDirError, load_binary_feature, save_binary_feature


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dedupdask' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "WorkDirError",
]
