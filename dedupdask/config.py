"""Configuration stage: every option of a run, validated once into a frozen object.

``ddk.run``/``ddk.extract`` and the CLI all build a :class:`RunConfig`; nothing downstream
re-validates user input. fastdup names are kept where fastdup has one (``min_offset``,
``nearest_neighbors_k``, ``ccthreshold``, ``turi_param``...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .localcluster import DEFAULT_DASHBOARD
from .thresholds import ISSUE_FIELDS

__all__ = ["RunConfig", "parse_turi_param", "OPTION_HELP", "IMAGES_PER_PARTITION"]

IMAGES_PER_PARTITION = 200_000
"""Default number of image members per partition of the per-image tables (consecutive archives
read together). The Dask scheduler keeps a record of every task, and run_mode=2 has ~170 tasks per
partition (reads, ~20 shuffles, writes): one partition per archive costs it ~1.3 GB per 1,000
archives (measured at 5M images). Grouping a LAION-sized shard of 10,000 samples by 20 keeps
40,000 shards at 2,000 partitions, while a partition of the files table stays near 75 MB."""

# One line of help per option; the CLI builds its flags from this table and RunConfig's fields.
OPTION_HELP: dict[str, str] = {
    "run_mode": "0 = extract + analyse, 1 = extract features only, 2 = analyse work_dir only",
    "min_offset": "first archive (inclusive) of the sorted archive list to process",
    "max_offset": "last archive (exclusive) of the sorted archive list; 0 = to the end",
    "model_path": "'effnet-lite0' (default), 'dct', or a path to an ONNX image model",
    "model_mean": "per-channel mean for a float user model, e.g. 0.485,0.456,0.406",
    "model_std": "per-channel std for a float user model, e.g. 0.229,0.224,0.225",
    "batch_size": "images per onnxruntime call",
    "num_threads": "onnxruntime threads per archive task (0 = 1 per task: a worker with T threads runs T tasks)",
    "nearest_neighbors_k": "neighbours per image in the kNN graph",
    "distance": "similarity metric of the kNN graph (cosine)",
    "threshold": "minimum embedding cosine of a near pair accepted without verification",
    "lower_threshold": "fraction of images reported as outliers",
    "ccthreshold": "minimum similarity of an edge in connected components",
    "copy_threshold": "minimum DCT-descriptor cosine of a 'copy' candidate pair (resize, JPEG, brightness, flip)",
    "verify_threshold": "minimum embedding cosine of a pair below threshold that is verified (finds crops)",
    "whitened_threshold": "minimum whitened embedding cosine of a pair that is verified (runs of 2,000+ images)",
    "whitened_margin": "a whitened pair under whitened_threshold is verified too when its cosine stands this much above its picture's 5th neighbour's",
    "verify_score": "pixel-alignment score (0..1) that confirms a verified pair",
    "verify": "verify uncertain candidate pairs by aligning their pixels (reads those images back)",
    "verify_keypoints": "also verify with the keypoint matcher (rotations, perspective, colour edits, overlays) pairs in which a picture is not a graphic (clip art, icons: flat fills), and pairs of two graphics pixel by pixel under its warp",
    "issue_thresholds": "cut-offs of the per-image issue types that replace the model's, e.g. dark=0.1,blurry=0.05,outlier=0 (0 = type off)",
    "max_memory_per_task": "memory one kNN task may use, e.g. 2GB; the kNN is partitioned into buckets when the vectors need more (default: half a Dask worker's memory limit per thread)",
    "max_client_memory": "memory the calling process may use to analyse work_dir itself, e.g. 1GB; a work_dir that needs more is analysed on the Dask workers (a local cluster without --client)",
    "d_reduce": "search neighbours on a PCA projection to this many dimensions (0 = off); similarities are recomputed on the original vectors",
    "knn_dtype": "storage of the vectors during the partitioned kNN search: float32 or float16 (similarities recomputed in float32)",
    "images_per_partition": "image members per partition of run_mode=2's per-image tables on a cluster: consecutive archives are read together up to this many (0 = one partition per archive; default: up to 200,000, and at least 4 partitions per Dask thread); fewer partitions = fewer tasks for the Dask scheduler to hold",
    "write_csv": "write fastdup's CSV files into work_dir (similarity.csv, connected_components.csv, ...), joined from one part per partition; off: only the Parquet tables under results/",
    "keep_archives": "copy each archive to work_dir/tmp/archives/ once and read it there",
    "keep_images": "also write every image member under work_dir/tmp/<archive>/",
    "turi_param": "fastdup-style 'delete_tar=0,delete_img=0,ccthreshold=0.96'",
    "resume": "skip archives whose done.json exists",
    "max_image_pixels": "images with more pixels are ERROR_IMAGE_TOO_LARGE (decompression bombs)",
    "max_member_bytes": "members larger than this are ERROR_MEMBER_TOO_LARGE and not read",
    "max_archive_bytes": "total member bytes one archive may read (many-member bombs); the rest is not read",
    "min_image_size": "images narrower or shorter than this are ERROR_IMAGE_TOO_SMALL",
    "storage_attempts": "attempts per storage operation on a network/server error (auth errors and missing objects fail at once)",
    "storage_deadline": "seconds after which a failing storage operation starts no new attempt (the one retry policy: botocore's and s3fs's retries are off)",
    "dashboard_address": "HOST:PORT of the dashboard of the local Dask cluster a run starts (127.0.0.1 = this machine only, 0.0.0.0 = every network interface, port 0 = a free one); '' = no dashboard",
    "progress": "show a progress bar",
    "index": "after the analysis, write work_dir/index/ (the vectors in buckets) so that this work_dir can be a reference that query runs search (a copy of the vectors' size)",
    "incremental": "reuse the last build's kNN graphs and verification scores (work_dir/graphs/) and search only the archives extracted since against all (the same pairs as a full rebuild with exact search); --full or --no-incremental searches everything again",
    "reference": "a built work_dir (local or URL) to search this run's images against: cross-set pairs only (train/test leakage; fastdup's test_dir)",
    "test_dir": "fastdup's form of a reference run: input_dir/work_dir are the reference (train) set, TEST_DIR the query images; the query's work_dir is WORK_DIR/test",
    "query_duplicates": "in a reference run, also find the query's own duplicates (query_similarity.csv)",
}

_TURI_KEYS = {"delete_tar", "delete_img", "ccthreshold", "threshold", "lower_threshold"}


def parse_turi_param(turi_param: str | None) -> dict[str, Any]:
    """Translate a fastdup ``turi_param`` string into dedupdask options.

    Parameters
    ----------
    turi_param : str or None
        Comma-separated ``key=value`` pairs, e.g. ``"delete_tar=0,delete_img=0"``.

    Returns
    -------
    dict
        Options keyed by their dedupdask names (``keep_archives``, ``keep_images``, ...).

    Examples
    --------
    >>> parse_turi_param("delete_tar=0,delete_img=0")
    {'keep_archives': True, 'keep_images': True}
    """
    out: dict[str, Any] = {}
    if not turi_param:
        return out
    for item in turi_param.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _TURI_KEYS:
            raise ValueError(
                f"turi_param: unsupported item {item!r}; supported keys: {sorted(_TURI_KEYS)}"
            )
        if key in ("delete_tar", "delete_img"):
            if value not in ("0", "1"):
                raise ValueError(f"turi_param: {key} must be 0 or 1, got {value!r}")
            out["keep_archives" if key == "delete_tar" else "keep_images"] = value == "0"
        else:
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"turi_param: {key} must be a number, got {value!r}") from None
    return out


def _triple(value: Any, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers, got {value!r}") from None
    if len(vals) != 3:
        raise ValueError(f"{name} must be three numbers, got {value!r}")
    return vals  # type: ignore[return-value]


def _issue_thresholds(value: Any) -> tuple[tuple[str, float], ...] | None:
    """``{"dark": 0.1}``, ``"dark=0.1,blurry=0.05"`` or pairs -> sorted ``(name, value)`` pairs.

    Examples
    --------
    >>> _issue_thresholds("dark=0.1, blurry=0.05")
    (('blurry', 0.05), ('dark', 0.1))
    >>> _issue_thresholds({"outlier_group_size": 20})
    (('outlier_group_size', 20.0),)
    """
    if value is None:
        return None
    if isinstance(value, str):
        pairs = []
        for item in (v.strip() for v in value.split(",")):
            if item:
                key, sep, val = item.partition("=")
                if not sep:
                    raise ValueError(f"issue_thresholds: {item!r} is not NAME=VALUE")
                pairs.append((key.strip(), val.strip()))
    else:
        pairs = list(value.items()) if isinstance(value, dict) else list(value)
    out = {}
    for key, val in pairs:
        if key not in ISSUE_FIELDS:
            raise ValueError(f"issue_thresholds: unknown name {key!r}; known: {', '.join(ISSUE_FIELDS)}")
        try:
            v = float(val)
        except (TypeError, ValueError):
            raise ValueError(f"issue_thresholds: {key} must be a number, got {val!r}") from None
        if key == "outlier_group_size":
            if v < 1 or not v.is_integer():
                raise ValueError(f"issue_thresholds: outlier_group_size must be an integer >= 1, got {val!r}")
        elif key == "outlier_search_members":
            if v < 0 or not v.is_integer():
                raise ValueError(f"issue_thresholds: outlier_search_members must be an integer >= 0, got {val!r}")
        elif key == "outlier_link":
            if not -1.0 <= v <= 1.0:
                raise ValueError(f"issue_thresholds: outlier_link is a cosine in [-1, 1], got {val!r}")
        elif not 0.0 <= v <= 1.0:
            raise ValueError(f"issue_thresholds: {key} is a cut-off on a score in [0, 1], got {val!r}")
        out[key] = v
    return tuple(sorted(out.items()))


def _dashboard_address(value: Any) -> str | None:
    """``"host:port"`` (port 0..65535, host may be empty: every interface, as in Dask), or None.

    Examples
    --------
    >>> _dashboard_address("127.0.0.1:8787"), _dashboard_address("[::1]:0"), _dashboard_address("")
    ('127.0.0.1:8787', '[::1]:0', None)
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    host, sep, port = value.strip().rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not port.isdigit() or int(port) > 65535 or any(c.isspace() for c in host):
        raise ValueError(
            f"dashboard_address must be HOST:PORT (127.0.0.1:0 = this machine, a free port; "
            f"0.0.0.0:8787 = every interface) or '' for none, got {value!r}"
        )
    return value.strip()


@dataclass(frozen=True)
class RunConfig:
    """Validated options of a dedupdask run (see ``ddk.run`` for their meaning).

    The thresholds (``threshold``, ``ccthreshold``, ``copy_threshold``, ``verify_threshold``,
    ``whitened_threshold``, ``whitened_margin``, ``verify_score``, ``lower_threshold``) default to None: the model's row of
    :data:`dedupdask.thresholds.TABLE`, resolved once by :func:`dedupdask.thresholds.resolve`;
    ``issue_thresholds`` (a dict, ``"dark=0.1,blurry=0.05"`` or pairs, kept as sorted pairs)
    replaces single values of :data:`dedupdask.thresholds.ISSUE_TABLE`.

    Examples
    --------
    >>> RunConfig(threshold=0.95).threshold, RunConfig().lower_threshold
    (0.95, None)
    """

    run_mode: int = 0
    min_offset: int = 0
    max_offset: int = 0
    model_path: str | None = None
    model_mean: tuple[float, float, float] | None = None
    model_std: tuple[float, float, float] | None = None
    batch_size: int = 16
    num_threads: int = 0
    nearest_neighbors_k: int = 2
    distance: str = "cosine"
    threshold: float | None = None
    lower_threshold: float | None = None
    ccthreshold: float | None = None
    copy_threshold: float | None = None
    verify_threshold: float | None = None
    whitened_threshold: float | None = None
    whitened_margin: float | None = None
    verify_score: float | None = None
    verify: bool = True
    verify_keypoints: bool = True
    issue_thresholds: tuple[tuple[str, float], ...] | None = None
    max_memory_per_task: str | int | None = None
    max_client_memory: str | int | None = None
    d_reduce: int = 0
    knn_dtype: str = "float32"
    images_per_partition: int | None = None
    write_csv: bool = True
    keep_archives: bool = False
    keep_images: bool = False
    turi_param: str | None = None
    resume: bool = True
    max_image_pixels: int = 100_000_000
    max_member_bytes: int = 256 * 2**20
    max_archive_bytes: int = 64 * 2**30
    min_image_size: int = 10
    storage_attempts: int = 5
    storage_deadline: float = 30.0
    dashboard_address: str | None = DEFAULT_DASHBOARD
    progress: bool = True
    index: bool = True
    incremental: bool = True
    reference: str | None = None
    test_dir: str | None = None
    query_duplicates: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict, compare=False)
    reference_storage_options: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        check(self.run_mode in (0, 1, 2), f"run_mode must be 0, 1 or 2, got {self.run_mode!r}")
        check(
            isinstance(self.min_offset, int) and self.min_offset >= 0,
            f"min_offset must be an integer >= 0, got {self.min_offset!r}",
        )
        check(
            isinstance(self.max_offset, int) and self.max_offset >= 0,
            f"max_offset must be an integer >= 0, got {self.max_offset!r}",
        )
        check(
            self.max_offset == 0 or self.max_offset > self.min_offset,
            f"max_offset ({self.max_offset}) must be 0 or greater than min_offset ({self.min_offset})",
        )
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size!r}")
        check(self.num_threads >= 0, f"num_threads must be >= 0, got {self.num_threads!r}")
        check(
            self.nearest_neighbors_k >= 1,
            f"nearest_neighbors_k must be >= 1, got {self.nearest_neighbors_k!r}",
        )
        check(self.distance == "cosine", f"distance must be 'cosine', got {self.distance!r}")
        for name in ("threshold", "ccthreshold", "copy_threshold", "verify_threshold", "whitened_threshold",
                     "whitened_margin", "verify_score"):  # fmt: skip
            v = getattr(self, name)
            check(v is None or -1.0 <= v <= 1.0, f"{name} must be in [-1, 1], got {v!r}")
        check(
            self.lower_threshold is None or 0.0 <= self.lower_threshold <= 1.0,
            f"lower_threshold must be a fraction in [0, 1], got {self.lower_threshold!r}",
        )
        if self.max_memory_per_task is not None:
            from .knn_partitioned import parse_memory

            parse_memory(self.max_memory_per_task)  # raises ValueError naming the option
        if self.max_client_memory is not None:
            from .knn_partitioned import parse_memory

            parse_memory(self.max_client_memory, "max_client_memory")
        check(
            isinstance(self.d_reduce, int) and self.d_reduce >= 0,
            f"d_reduce must be an integer >= 0 (0 = no reduction), got {self.d_reduce!r}",
        )
        check(
            self.knn_dtype in ("float32", "float16"),
            f"knn_dtype must be 'float32' or 'float16', got {self.knn_dtype!r}",
        )
        check(
            self.images_per_partition is None
            or (isinstance(self.images_per_partition, int) and self.images_per_partition >= 0),
            f"images_per_partition must be an integer >= 0 (0 = one partition per archive), got {self.images_per_partition!r}",
        )
        check(self.max_image_pixels > 0, "max_image_pixels must be > 0")
        check(self.max_member_bytes > 0, "max_member_bytes must be > 0")
        check(self.max_archive_bytes > 0, "max_archive_bytes must be > 0")
        check(self.min_image_size >= 1, "min_image_size must be >= 1")
        check(
            isinstance(self.storage_attempts, int) and self.storage_attempts >= 1,
            f"storage_attempts must be an integer >= 1, got {self.storage_attempts!r}",
        )
        object.__setattr__(self, "dashboard_address", _dashboard_address(self.dashboard_address))
        check(
            isinstance(self.storage_deadline, (int, float)) and not isinstance(self.storage_deadline, bool)
            and 0 < self.storage_deadline < float("inf"),
            f"storage_deadline must be a number of seconds > 0, got {self.storage_deadline!r}",
        )
        object.__setattr__(self, "issue_thresholds", _issue_thresholds(self.issue_thresholds))
        check(
            self.reference is None or (isinstance(self.reference, str) and self.reference.strip() != ""),
            f"reference must be a work_dir path or URL, got {self.reference!r}",
        )
        check(
            self.reference is None or self.test_dir is None,
            "give either reference (the query is input_dir/work_dir) or test_dir (the reference is "
            "input_dir/work_dir), not both",
        )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> RunConfig:
        """Build a config from ``ddk.run`` keywords, applying ``turi_param`` and env defaults.

        Explicit keywords win over ``turi_param`` values, which win over defaults.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(unknown)}")
        kwargs = {k: v for k, v in kwargs.items() if v is not None or k in ("model_path", "dashboard_address")}
        turi = parse_turi_param(kwargs.get("turi_param"))
        for key, value in turi.items():
            kwargs.setdefault(key, value)
        if kwargs.get("storage_options") is None:
            kwargs["storage_options"] = {}
        kwargs["model_mean"] = _triple(kwargs.get("model_mean"), "model_mean")
        kwargs["model_std"] = _triple(kwargs.get("model_std"), "model_std")
        for key in ("min_offset", "max_offset", "batch_size", "num_threads", "run_mode", "storage_attempts", "d_reduce"):
            if key in kwargs and isinstance(kwargs[key], float) and kwargs[key].is_integer():
                kwargs[key] = int(kwargs[key])
        return cls(**kwargs)

    @property
    def reference_options(self) -> dict[str, Any]:
        """fsspec options of the reference work_dir and its shards: ``reference_storage_options``,
        else ``storage_options``.

        Examples
        --------
        >>> RunConfig(storage_options={"anon": True}).reference_options
        {'anon': True}
        """
        so = self.storage_options if self.reference_storage_options is None else self.reference_storage_options
        return dict(so or {})

    def worker_threads(self) -> int:
        """onnxruntime intra-op threads for one task.

        A Dask worker with T threads runs T archive tasks at once, so one onnxruntime thread
        per task keeps the worker at T busy cores; more would oversubscribe the machine
        (research/perf.md: spinning ORT threads halve throughput on busy cores).
        """
        return self.num_threads or 1
