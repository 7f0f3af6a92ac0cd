"""dedupdask: duplicates, near-duplicates, outliers and broken images in webdataset archives, on Dask.

Examples
--------
>>> import dedupdask as ddk
>>> res = ddk.run("shards/", "work/")  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

import contextlib
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

# No telemetry. onnxruntime's Linux/macOS wheels (>= 1.29) record telemetry events for upload
# in a local store (``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``: ``onnxruntime.db`` and a
# ``deviceid``) and a ``$TMPDIR/.ses`` file from the moment onnxruntime is imported, so its
# ``disable_telemetry_events()`` comes too late. What stops all of it is this variable, read once
# per process when onnxruntime is first imported. It is set here, before any dedupdask code
# imports onnxruntime: in this process, in the worker processes a run starts (they inherit it)
# and on any Dask worker (which imports dedupdask to unpickle a task before the task builds an
# onnxruntime session). If onnxruntime was imported first, only the events can still be stopped.
if "onnxruntime" in sys.modules and os.environ.get("ORT_DISABLE_TELEMETRY", "").strip().lower() not in ("1", "true"):
    import warnings

    with contextlib.suppress(Exception):
        sys.modules["onnxruntime"].disable_telemetry_events()
    warnings.warn(
        "onnxruntime was imported before dedupdask, so its telemetry store was already created in "
        "this process; import dedupdask first or set ORT_DISABLE_TELEMETRY=1 in the environment",
        RuntimeWarning,
        stacklevel=2,
    )
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

# Imported on first use: ``import dedupdask`` stays fast (a CLI's --help, a Dask worker that
# only scores pixels), and dask.dataframe / pyarrow load only when a run needs them.
_LAZY = {
    "RunConfig": "config",
    "Gallery": "galleries",
    "create_components_gallery": "galleries",
    "create_duplicates_gallery": "galleries",
    "create_issues_gallery": "galleries",
    "create_outliers_gallery": "galleries",
    "create_stats_gallery": "galleries",
    "ExtractReport": "pipeline",
    "build": "pipeline",
    "extract": "pipeline",
    "run": "pipeline",
    "index": "pipeline",
    "ReferenceResult": "reference",
    "DedupResult": "results",
    "load": "results",
    "list_sources": "sources",
    "load_binary_feature": "store",
    "save_binary_feature": "store",
    "WorkDirError": "store",
    "CleanReport": "clean",
    "write_clean_shards": "clean",
    "write_removals": "removals",
}

if TYPE_CHECKING:  # pragma: no cover
    from .clean import CleanReport, write_clean_shards
    from .config import RunConfig
    from .galleries import (
        Gallery,
        create_components_gallery,
        create_duplicates_gallery,
        create_issues_gallery,
        create_outliers_gallery,
        create_stats_gallery,
    )
    from .pipeline import ExtractReport, build, extract, index, run
    from .reference import ReferenceResult
    from .removals import write_removals
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
    "build",
    "extract",
    "index",
    "ReferenceResult",
    "list_sources",
    "load_binary_feature",
    "run",
    "save_binary_feature",
    "DedupResult",
    "Gallery",
    "create_components_gallery",
    "create_duplicates_gallery",
    "create_issues_gallery",
    "create_outliers_gallery",
    "create_stats_gallery",
    "load",
    "WorkDirError",
    "CleanReport",
    "write_clean_shards",
    "write_removals",
]
