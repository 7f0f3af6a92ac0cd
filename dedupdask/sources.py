"""Source stage: turn ``input_dir`` into the sorted list of archive tasks.

An input is a folder (searched recursively), a glob, an ``s3://`` prefix, a list of paths, or a
text file that lists paths. Archives are ``.tar .tar.gz .tgz .zip`` in any letter case; loose
images become one task per folder chunk. Everything goes through fsspec with one
``storage_options`` dict, so local disks and S3/MinIO look the same.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec

from . import remote

__all__ = [
    "ArchiveSource",
    "IMAGE_EXTENSIONS",
    "archive_kind",
    "list_sources",
    "select_offsets",
]

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png gif bmp dib tif tiff webp ppm pgm pbm pnm ico tga jp2 j2k".split()
)
_LIST_EXTENSIONS = (".txt", ".lst", ".list", ".csv")
LOOSE_CHUNK = 1000  # loose images per task


@dataclass(frozen=True)
class ArchiveSource:
    """One unit of work: an archive, or a chunk of loose images in one folder.

    Attributes
    ----------
    url : str
        Full URL of the archive (``s3://b/k.tar`` or an absolute local path); for a chunk of
        loose images, the folder URL.
    name : str
        Work-dir file prefix: the path relative to the input root with ``/`` replaced by ``__``.
    kind : str
        ``"tar"`` (plain, gz, bz2 or xz: tarfile detects), ``"zip"`` or ``"folder"``.
    members : tuple of str
        For ``kind="folder"``: the image URLs of this chunk, sorted. Empty otherwise.
    """

    url: str
    name: str
    kind: str
    members: tuple[str, ...] = ()


def archive_kind(path: str) -> str | None:
    """Return ``"tar"``, ``"zip"`` or ``None`` from a path's extension (any letter case)."""
    low = path.lower()
    if low.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    if low.endswith(".zip"):
        return "zip"
    return None


def _is_image_path(path: str) -> bool:
    ext = posixpath.splitext(path)[1].lower().lstrip(".")
    return ext in IMAGE_EXTENSIONS


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Full URL for a path as returned by ``fs.find`` (adds ``s3://`` back)."""
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _read_list_file(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    with fs.open(path, "rt", encoding="utf-8") as f:
        lines = [ln.strip() for ln in f]
    out = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        if ln.lower() in ("filename", "path", "url"):  # a CSV-ish header line
            continue
        out.append(ln.split(",")[0].strip() if path.lower().endswith(".csv") else ln)
    return out


def _expand(
    item: str, storage_options: dict[str, Any], allow_list_file: bool, attempts: int = remote.DEFAULT_ATTEMPTS,
    deadline: float = remote.DEFAULT_DEADLINE,
) -> tuple[list[tuple[str, str]], str]:
    """Expand one input into ``(url, kind_or_image)`` pairs and its root (a URL prefix)."""
    fs, path = remote.filesystem(item, storage_options)
    local = _is_local(fs)

    def tried(fn: Any, *args: Any) -> Any:  # storage errors name the input, transient ones retried
        return remote.call(fn, *args, url=item, action="list", attempts=attempts, deadline=deadline)

    def is_file(p: str) -> bool:  # fs.isfile answers False for any error, an outage included
        try:
            return tried(fs.info, p).get("type") == "file"
        except FileNotFoundError:
            return False

    if local:
        import os

        path = os.path.abspath(os.path.expanduser(path))
    else:
        fs.invalidate_cache(path)  # a long-lived process must see objects uploaded since
    if tried(fs.isdir, path):
        root = path
        found = sorted(tried(fs.find, path))
    elif any(c in item for c in "*?["):
        found = sorted(tried(fs.glob, path))
        prefix = path.split("*")[0].split("?")[0].split("[")[0]
        root = prefix if prefix.endswith("/") else posixpath.dirname(prefix)
    elif is_file(path):
        kind = archive_kind(path)
        if kind is None and not _is_image_path(path):
            if allow_list_file:
                listed = tried(_read_list_file, fs, path)
                if not listed:
                    raise ValueError(f"input list file {item!r} lists no paths")
                return _expand_many(listed, storage_options, allow_list_file=False, attempts=attempts,
                                    deadline=deadline)
            raise ValueError(f"input {item!r} is neither an archive, an image nor a folder")
        return [(_unstrip(fs, path), kind or "image")], posixpath.dirname(path)
    else:
        raise FileNotFoundError(f"input {item!r} does not exist")
    pairs = []
    for p in found:
        kind = archive_kind(p)
        if kind is not None:
            pairs.append((_unstrip(fs, p), kind))
        elif _is_image_path(p):
            pairs.append((_unstrip(fs, p), "image"))
    return pairs, root


def _expand_many(
    items: Sequence[str], storage_options: dict[str, Any], allow_list_file: bool,
    attempts: int = remote.DEFAULT_ATTEMPTS, deadline: float = remote.DEFAULT_DEADLINE,
) -> tuple[list[tuple[str, str]], str]:
    pairs: list[tuple[str, str]] = []
    roots: list[str] = []
    for it in items:
        p, r = _expand(str(it), storage_options, allow_list_file, attempts, deadline)
        pairs.extend(p)
        roots.append(r)
    root = _common_root(roots)
    return pairs, root


def _common_root(paths: Sequence[str]) -> str:
    if not paths:
        return ""
    parts = [p.rstrip("/").split("/") for p in paths]
    common = []
    for segs in zip(*parts, strict=False):
        if all(s == segs[0] for s in segs):
            common.append(segs[0])
        else:
            break
    return "/".join(common)


def _strip_url(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else url


def _rel_name(url: str, root: str) -> str:
    path, root = _strip_url(url), _strip_url(root).rstrip("/")
    rel = path[len(root) + 1 :] if root and path.startswith(root + "/") else path.lstrip("/")
    return rel.replace("/", "__")


def list_sources(
    input_dir: str | Sequence[str],
    storage_options: dict[str, Any] | None = None,
    *,
    attempts: int = remote.DEFAULT_ATTEMPTS,
    deadline: float = remote.DEFAULT_DEADLINE,
) -> list[ArchiveSource]:
    """List every archive (and chunk of loose images) of an input, sorted.

    Parameters
    ----------
    input_dir : str or sequence of str
        A folder (recursive), a glob, an ``s3://bucket/prefix``, an archive, a list of those,
        or a text file with one path or URL per line.
    storage_options : dict, optional
        Passed to fsspec for every file system touched.
    attempts : int
        Attempts per listing call on network/server errors.
    deadline : float
        Seconds one failing listing call may spend retrying.

    Returns
    -------
    list of ArchiveSource
        Sorted by URL; the order ``min_offset``/``max_offset`` slice.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    dedupdask.remote.StorageError
        If a listing fails (wrong credentials, unreachable server...); names the input URL.
    ValueError
        If the input matches no archive and no image.

    Examples
    --------
    >>> list_sources("shards/")  # doctest: +SKIP
    [ArchiveSource(url='/data/shards/00000.tar', name='00000.tar', kind='tar', members=())]
    """
    storage_options = dict(storage_options or {})
    if isinstance(input_dir, (str, bytes)) or hasattr(input_dir, "__fspath__"):
        items = [str(input_dir)]
    else:
        items = [str(x) for x in input_dir]
        if not items:
            raise ValueError("input_dir is an empty list")
    pairs, root = _expand_many(items, storage_options, allow_list_file=True, attempts=attempts, deadline=deadline)
    seen: set[str] = set()
    archives: list[ArchiveSource] = []
    loose: dict[str, list[str]] = {}
    for url, kind in pairs:
        if url in seen:
            continue
        seen.add(url)
        if kind == "image":
            loose.setdefault(posixpath.dirname(url), []).append(url)
        else:
            archives.append(ArchiveSource(url=url, name=_rel_name(url, root), kind=kind))
    for folder, files in loose.items():
        files.sort()
        rel = _rel_name(folder, root) if _strip_url(folder).rstrip("/") != _strip_url(root).rstrip("/") else ""
        for i in range(0, len(files), LOOSE_CHUNK):
            chunk = f"images-{i // LOOSE_CHUNK:05d}"
            name = f"{rel}__{chunk}" if rel else chunk
            archives.append(
                ArchiveSource(url=folder, name=name, kind="folder", members=tuple(files[i : i + LOOSE_CHUNK]))
            )
    if not archives:
        shown = items[0] if len(items) == 1 else f"{items[0]!r} and {len(items) - 1} more"
        raise ValueError(
            f"input {shown!r} matched no archive (.tar .tar.gz .tgz .zip) and no image"
        )
    archives.sort(key=lambda a: (a.url, a.name))
    names = [a.name for a in archives]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[:3]
        raise ValueError(f"inputs map to the same work_dir names {dup}; give inputs under one root")
    return archives


def select_offsets(sources: list[ArchiveSource], min_offset: int, max_offset: int) -> list[ArchiveSource]:
    """Half-open slice ``[min_offset, max_offset)`` of the sorted list (``max_offset=0``: to the end)."""
    if min_offset > len(sources):
        raise ValueError(f"min_offset={min_offset} is past the {len(sources)} archives of the input")
    return sources[min_offset : max_offset or None]
