"""Analysis stage: exact groups, similar pairs, outliers, components, stats, issues, invalid images.

Every function here works on plain numpy/pandas data in the global index space (0..N-1 =
the rows of ``atrain_features.dat.csv``) and returns one tidy table whose columns are defined
once, in the module that makes it. The ``*_dask`` modules compute the same tables from Dask
DataFrames on the workers, without gathering them (``routing`` moves their messages).
"""

from .components import COMPONENT_COLUMNS, REMOVE_COLUMNS, components_table, duplicates_to_remove
from .components_dask import DaskComponents, components_table_dask
from .exact import ExactGroups, exact_groups, expand_graph
from .exact_dask import EXACT_COLUMNS, exact_edges, exact_groups_dask
from .issues import ISSUE_COLUMNS, find_issues
from .outliers import OUTLIER_COLUMNS, nearest_neighbours, outliers_table
from .similarity import SIMILARITY_COLUMNS, similarity_table
from .stats import (
    BAD_CSV_COLUMNS,
    INVALID_COLUMNS,
    STATS_COLUMNS,
    STATS_CSV_COLUMNS,
    invalid_table,
    stats_frame,
)

__all__ = [
    "BAD_CSV_COLUMNS",
    "COMPONENT_COLUMNS",
    "DaskComponents",
    "EXACT_COLUMNS",
    "ExactGroups",
    "INVALID_COLUMNS",
    "ISSUE_COLUMNS",
    "OUTLIER_COLUMNS",
    "REMOVE_COLUMNS",
    "SIMILARITY_COLUMNS",
    "STATS_COLUMNS",
    "STATS_CSV_COLUMNS",
    "components_table_dask",
    "components_table",
    "duplicates_to_remove",
    "exact_edges",
    "exact_groups",
    "exact_groups_dask",
    "expand_graph",
    "find_issues",
    "invalid_table",
    "nearest_neighbours",
    "outliers_table",
    "similarity_table",
    "stats_frame",
]
