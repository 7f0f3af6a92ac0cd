"""A check of ``work_dir/index/`` shared by the reference and incremental tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_every_row_once_in_its_best_bucket(col: Any, idx: Any) -> None:
    """Each row of ``col`` is in exactly one bucket of ``idx``, with its own unit vector, in the
    bucket of its most similar centroid."""
    seen, vecs = [], col.vector_rows()
    vecs = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    for b in range(idx.centroids.shape[0]):
        rows, v = idx.read_bucket(b)
        seen.append(rows)
        np.testing.assert_allclose(v, vecs[rows], atol=1e-6)
        if rows.size:
            assert (np.argmax(vecs[rows] @ idx.centroids.T, axis=1) == b).all()
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(col.n))
