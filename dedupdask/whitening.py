"""Whitening stage: the embedding in which a run's candidate pairs for verification are chosen.

The raw cosine of EfficientNet-Lite0's pooled features depends on the dataset: pictures that
look alike as a set (synthetic shapes, product shots on white, one camera's street scenes)
share a large common component, so unrelated pairs of such a set sit at cosines 0.65-0.85 and
one raw cut either verifies nearly every kNN pair or misses copies elsewhere. A PCA whitening
fitted on the run's own vectors (no labels; Jegou & Chum, ECCV 2012) removes that common
component and gives every remaining direction the same weight: the vectors are centred on the
run's mean, projected on the top :data:`DIMS` principal axes, each divided by its standard
deviation, and L2-normalised. One cosine cut in that space
(:attr:`dedupdask.thresholds.Thresholds.whitened_threshold`, fixed on the tuning families of
``benchmarks/quality_families.py``) then transfers across datasets
(``benchmarks/results/whitening_probe.txt``: one cut keeps 97-99 % of the planted pairs on
three sets whose candidate counts fall 11 %, 29 % and 98 %). A pair under that cut is verified too
when it stands :attr:`~dedupdask.thresholds.Thresholds.whitened_margin` above its picture's
5th neighbour (:func:`dedupdask.analyses.tiers.stands_out`): a cosine means more or less
depending on how crowded its part of the whitened space is.

The whitening is fitted by one task on a fixed random sample of at most :data:`SAMPLE` rows
(the partitioned kNN's sampler, :mod:`dedupdask.knn_fit`) and is applied where vectors are
read for the whitened kNN graph (:attr:`dedupdask.knn_rows.VectorBlock.post`), so no vector
travels for it. An incremental build keeps the whitening of the build that fitted it while
those archives are unchanged (``graphs/whitening.npz``), so the kept whitened graph and the
new rows' search share one space; ``incremental=False`` fits it anew. A covariance of 1280 dimensions is not estimated from a few hundred images
(whitened, they become equidistant): below :data:`MIN_IMAGES` a run keeps the raw band
(``verify_threshold``), where verifying every candidate costs seconds anyway.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np

from .knn_rows import _unit

__all__ = ["DIMS", "MIN_IMAGES", "SAMPLE", "Whitening", "fit_whitening", "run_whitening"]

DIMS = 256
"""Principal axes kept (whitening to 128 or 512 dims was worse: ``whitening_probe.txt``)."""
MIN_IMAGES = 2_000
"""Fewest images whose vectors are whitened: about 8 per kept axis."""
SAMPLE = 20_000
"""Most rows the whitening is fitted on (one task holds them: 100 MB at 1280 dims)."""


@dataclass(frozen=True, eq=False)
class Whitening:
    """A fitted whitening: ``unit((unit(x) - mean) @ projection)``.

    Attributes
    ----------
    mean : ndarray
        float32 ``[d]``: mean of the sample's unit rows.
    projection : ndarray
        float32 ``[d, DIMS]``: principal axes, each divided by its standard deviation.
    n_sample : int
        Rows it was fitted on.
    kept : float
        Share of the sample's variance on the kept axes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> w = Whitening.fit(rng.standard_normal((500, 16)).astype(np.float32), dims=4)
    >>> w.apply(rng.standard_normal((3, 16)).astype(np.float32)).shape
    (3, 4)
    """

    mean: np.ndarray
    projection: np.ndarray
    n_sample: int
    kept: float

    @property
    def dims(self) -> int:
        return int(self.projection.shape[1])

    @classmethod
    def fit(cls, x: np.ndarray, dims: int = DIMS) -> Whitening:
        """Fit on rows ``x`` (made unit first): their mean and top ``dims`` principal axes."""
        x = _unit(x).astype(np.float64)
        mean = x.mean(axis=0)
        xc = x - mean
        cov = xc.T @ xc / max(len(x) - 1, 1)
        lam, vec = np.linalg.eigh(cov)
        lam, vec = lam[::-1][:dims], vec[:, ::-1][:, :dims]
        big = np.argmax(np.abs(vec), axis=0)  # signs fixed: reruns give the same projection
        vec = vec * np.sign(vec[big, np.arange(vec.shape[1])])
        proj = vec / np.sqrt(np.maximum(lam, 1e-12 * max(float(lam[0]), 1e-30)))
        kept = float(lam.sum() / max(float(np.trace(cov)), 1e-30))
        return cls(mean.astype(np.float32), np.ascontiguousarray(proj, dtype=np.float32), len(x), kept)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Unit whitened rows (float32 ``[n, dims]``) of raw rows ``x``."""
        return _unit((_unit(x) - self.mean) @ self.projection)

    def to_bytes(self) -> bytes:
        """The whitening as an ``.npz`` file (:meth:`from_bytes` reads it)."""
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, projection=self.projection, n_sample=self.n_sample, kept=self.kept)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Whitening:
        """A whitening written by :meth:`to_bytes`.

        Examples
        --------
        >>> w = Whitening.fit(np.eye(6, 4, dtype=np.float32) + 0.1, dims=2)
        >>> bool((Whitening.from_bytes(w.to_bytes()).projection == w.projection).all())
        True
        """
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(z["mean"], z["projection"], int(z["n_sample"]), float(z["kept"]))

    @property
    def token(self) -> str:
        """A name of this whitening (what a graph searched in it is kept under)."""
        from dask.base import tokenize

        return tokenize(self)

    def to_dict(self) -> dict[str, Any]:
        """What ``results/run.json`` records of it."""
        return {"dims": self.dims, "sample": int(self.n_sample), "variance_kept": round(self.kept, 4)}

    def __dask_tokenize__(self) -> str:  # a stable key for the tasks that read through it
        from dask.base import tokenize

        return tokenize(self.mean.tobytes(), self.projection.tobytes())


def run_whitening(col: Any, cache: Any = None, *, random_state: int = 0) -> tuple[Whitening, dict[str, Any]]:
    """The whitening of one analysis run: the one an earlier build kept when ``cache`` (a
    :class:`~dedupdask.knn_incremental.GraphCache`) may reuse it, else fitted here; kept in
    ``cache`` for the next build. Returns it and what ``run.json`` records of it."""
    w = None if cache is None else cache.previous_whitening()
    reused = w is not None
    if w is None:
        w = fit_whitening(col, random_state=random_state)
    if cache is not None:
        cache.keep_whitening(w)
    return w, {**w.to_dict(), "reused": reused}


def fit_whitening(col: Any, *, sample: int = SAMPLE, random_state: int = 0) -> Whitening:
    """Fit the whitening of a loaded work_dir's embeddings on a random sample (one task).

    Parameters
    ----------
    col : Collection
        The done archives (their ``features.dat``).
    sample : int
        Most rows read (a fixed random subset, every row when there are fewer).
    random_state : int
        Seed of the subset.

    Returns
    -------
    Whitening

    Examples
    --------
    >>> w = fit_whitening(collect("work"))  # doctest: +SKIP
    >>> w.dims  # doctest: +SKIP
    256
    """
    from .knn_fit import _sample_array, _sample_positions
    from .knn_rows import VectorSource

    source = VectorSource.from_collection(col)
    rows = _sample_array(source, _sample_positions(source.n, sample, random_state))
    dims = min(DIMS, source.d, max(1, source.n - 1))
    (w,) = dask.compute(dask.delayed(Whitening.fit, pure=True)(rows, dims))
    return w
