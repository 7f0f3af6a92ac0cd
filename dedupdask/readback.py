"""Read-back stage: members of already extracted archives, fetched again by name.

Galleries need thumbnails of the images they show and verification needs the pixels of the
candidate pairs; neither may extract archives to disk. The wanted members are grouped by
archive and each archive is read once -- a tar in one streaming pass
(:func:`dedupdask.archives.iter_members`) that stops as soon as every wanted member was seen,
a zip through its central directory, a folder of loose images file by file -- local or on
``s3://`` through the run's ``storage_options``. Nothing raises: a member that cannot be read
gets the reason instead.
"""

from __future__ import annotations

import base64
import io
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import remote
from .archives import ArchiveReadError, clean_name, iter_members
from .sources import ArchiveSource, archive_kind

__all__ = [
    "THUMB_QUALITY",
    "THUMB_SIDE",
    "Key",
    "Thumbnail",
    "make_thumbnail",
    "read_archive_members",
    "read_thumbnails",
]

THUMB_SIDE = 200
THUMB_QUALITY = 80
Key = tuple[str, str, int]  # (archive url, member name, occurrence of that name in the archive)


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail as a ``data:`` URI, or the reason there is none."""

    uri: str | None = None
    width: int = 0
    height: int = 0
    reason: str | None = None


# -- thumbnails -------------------------------------------------------------------------------------
def make_thumbnail(
    data: bytes,
    *,
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
    max_image_pixels: int = 100_000_000,
) -> Thumbnail:
    """Decode an encoded image and return a JPEG thumbnail as a ``data:`` URI.

    The image goes through :func:`dedupdask.decode.to_rgb`, the conversion the model's input
    went through: EXIF orientation applied, transparency on white.

    Parameters
    ----------
    data : bytes
        The encoded image (any format Pillow reads).
    max_side : int
        Longest side of the thumbnail in pixels.
    quality : int
        JPEG quality.
    max_image_pixels : int
        Larger images are not decoded (a placeholder says why).

    Returns
    -------
    Thumbnail
        ``uri`` set, or ``reason`` set when the bytes cannot be shown.

    Examples
    --------
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (640, 320)).save(buf, "PNG")
    >>> t = make_thumbnail(buf.getvalue())
    >>> (t.width, t.height, t.uri[:23])
    (200, 100, 'data:image/jpeg;base64,')
    """
    from PIL import Image

    from .decode import ImageRefused, open_rgb

    try:
        # decoded at a reduced scale when the format allows, shown as the model saw it
        im, _, _ = open_rgb(data, draft=(2 * max_side, 2 * max_side), max_image_pixels=max_image_pixels)
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
    except ImageRefused as e:
        return Thumbnail(reason=str(e))
    except Exception as e:  # noqa: BLE001 - any undecodable image becomes a placeholder
        return Thumbnail(reason=f"cannot decode image: {type(e).__name__}: {e}")
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Thumbnail(uri=uri, width=im.width, height=im.height)


def _source_for(url: str) -> ArchiveSource:
    return ArchiveSource(url=url, name="", kind=archive_kind(url) or "folder")


def _read_tar(
    url: str, wanted: set[tuple[str, int]], so: dict[str, Any], opts: dict[str, Any]
) -> dict[tuple[str, int], Thumbnail]:
    """One streaming pass over a tar, stopped as soon as every wanted member was seen."""
    out: dict[tuple[str, int], Thumbnail] = {}
    left = set(wanted)
    seen: Counter[str] = Counter()
    failure = None
    gen = iter_members(_source_for(url), so, max_member_bytes=opts["max_member_bytes"])
    try:
        for m in gen:
            if m.kind != "file":
                continue
            k = (m.name, seen[m.name])
            seen[m.name] += 1
            if k not in left:
                continue
            left.discard(k)
            if m.data is None:
                out[k] = opts["fail"](m.error or "member could not be read")
            else:
                out[k] = opts["handle"](m.data)
            if not left:
                break
    except ArchiveReadError as e:
        failure = f"archive broken before this member: {e}"
    except OSError as e:
        failure = f"cannot read archive: {type(e).__name__}: {e}"
    finally:
        gen.close()
    for k in left:
        out[k] = opts["fail"](failure or "member not found in the archive")
    return out


def _read_zip(
    url: str, wanted: set[tuple[str, int]], so: dict[str, Any], opts: dict[str, Any]
) -> dict[tuple[str, int], Thumbnail]:
    """Random access through the zip's central directory: only the wanted members are read."""
    import zipfile

    out: dict[tuple[str, int], Thumbnail] = {}
    limit = opts["max_member_bytes"]
    f = None
    try:
        f = remote.open_input(url, so)
        with f, zipfile.ZipFile(f) as zf:
            seen: Counter[str] = Counter()
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = clean_name(info.filename)
                k = (name, seen[name])
                seen[name] += 1
                if k not in wanted:
                    continue
                if info.file_size > limit:
                    out[k] = opts["fail"](f"member of {info.file_size} bytes exceeds {limit}")
                    continue
                try:
                    with zf.open(info) as mf:
                        data = mf.read(limit + 1)
                except (zipfile.BadZipFile, EOFError, NotImplementedError, ValueError,
                        RuntimeError, OSError) as e:  # fmt: skip
                    if f.failure:  # storage failed, not this member: the whole archive says so
                        raise f.failure from e
                    out[k] = opts["fail"](f"cannot read zip member: {e}")
                    continue
                out[k] = opts["handle"](data)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as e:
        cause = f.failure if f is not None and f.failure else e  # zipfile hides storage errors
        reason = f"cannot read archive: {type(cause).__name__}: {cause}"
        return {k: out.get(k, opts["fail"](reason)) for k in wanted}
    return {k: out.get(k, opts["fail"]("member not found in the archive")) for k in wanted}


def _read_folder(
    url: str, wanted: set[tuple[str, int]], so: dict[str, Any], opts: dict[str, Any]
) -> dict[tuple[str, int], Thumbnail]:
    """Loose images: read each wanted file."""
    out: dict[tuple[str, int], Thumbnail] = {}
    limit = opts["max_member_bytes"]
    try:
        fs, root = remote.filesystem(url, so)
    except Exception as e:  # noqa: BLE001 - bad URL / options: placeholders, not a crash
        return {k: opts["fail"](f"cannot open {url}: {e}") for k in wanted}
    for k in wanted:
        path = posixpath.join(root.rstrip("/"), k[0])
        try:
            with fs.open(path, "rb") as f:
                data = f.read(limit + 1)
        except OSError as e:
            out[k] = opts["fail"](f"cannot read file: {type(e).__name__}: {e}")
            continue
        if len(data) > limit:
            out[k] = opts["fail"](f"file exceeds {limit} bytes")
            continue
        out[k] = opts["handle"](data)
    return out


def _read_one_archive(
    url: str, wanted: set[tuple[str, int]], so: dict[str, Any], opts: dict[str, Any]
) -> dict[Key, Thumbnail]:
    kind = archive_kind(url)
    reader = _read_tar if kind == "tar" else _read_zip if kind == "zip" else _read_folder
    try:
        got = reader(url, wanted, so, opts)
    except Exception as e:  # noqa: BLE001 - whatever breaks, the page is still written
        got = {k: opts["fail"](f"cannot read archive: {type(e).__name__}: {e}") for k in wanted}
    return {(url, name, occ): t for (name, occ), t in got.items()}


def read_archive_members(
    url: str,
    wanted: Iterable[tuple[str, int]],
    handle: Callable[[bytes], Any],
    fail: Callable[[str], Any],
    storage_options: dict[str, Any] | None = None,
    *,
    max_member_bytes: int = 256 * 2**20,
) -> dict[tuple[str, int], Any]:
    """``handle(bytes)`` of the wanted members of one archive, read once; ``fail(reason)`` else.

    The same readers as the thumbnails (a tar in one streaming pass that stops when every
    wanted member was seen, a zip through its index, loose files one by one); nothing raises.

    Parameters
    ----------
    url : str
        Archive URL (or folder URL for loose images).
    wanted : iterable of (member name, occurrence)
    handle : callable
        Called with the bytes of each wanted member.
    fail : callable
        Called with the reason when a member cannot be read.
    storage_options : dict, optional
        fsspec options.
    max_member_bytes : int
        Larger members are not read (``fail``).

    Returns
    -------
    dict
        One value per wanted key.

    Examples
    --------
    >>> read_archive_members("shards/00000.tar", [("a.jpg", 0)], len, str)  # doctest: +SKIP
    {('a.jpg', 0): 5120}
    """
    opts = {"max_member_bytes": max_member_bytes, "handle": handle, "fail": fail}
    got = _read_one_archive(
        url, {(n, int(o)) for n, o in wanted}, dict(storage_options or {}), opts
    )
    return {(name, occ): v for (_, name, occ), v in got.items()}


def read_thumbnails(
    wanted: Iterable[Key],
    storage_options: dict[str, Any] | None = None,
    *,
    max_side: int = THUMB_SIDE,
    quality: int = THUMB_QUALITY,
    max_member_bytes: int = 256 * 2**20,
    max_image_pixels: int = 100_000_000,
    max_workers: int = 8,
) -> dict[Key, Thumbnail]:
    """Thumbnails of archive members, each archive read once (archives in parallel threads).

    Parameters
    ----------
    wanted : iterable of (archive url, member name, occurrence)
        ``occurrence`` tells apart members of one archive that share a name (0 = the first).
        For a folder chunk the "archive" is the folder URL and the member the relative path.
    storage_options : dict, optional
        fsspec options (the run's).
    max_side, quality : int
        Thumbnail size and JPEG quality.
    max_member_bytes, max_image_pixels : int
        Larger members / images get a placeholder.
    max_workers : int
        Archives read at the same time.

    Returns
    -------
    dict
        One :class:`Thumbnail` per wanted key; failures have ``reason`` set, nothing raises.

    Examples
    --------
    >>> t = read_thumbnails([("shards/00000.tar", "000000000.jpg", 0)])  # doctest: +SKIP
    """
    so = dict(storage_options or {})
    by_archive: dict[str, set[tuple[str, int]]] = {}
    for url, name, occ in wanted:
        by_archive.setdefault(url, set()).add((name, int(occ)))
    thumb = {"max_side": max_side, "quality": quality, "max_image_pixels": max_image_pixels}
    opts = {
        "max_member_bytes": max_member_bytes,
        "handle": lambda data: make_thumbnail(data, **thumb),
        "fail": lambda reason: Thumbnail(reason=reason),
    }
    out: dict[Key, Thumbnail] = {}
    if not by_archive:
        return out
    n = max(1, min(max_workers, len(by_archive)))
    if n == 1:
        for url, w in by_archive.items():
            out.update(_read_one_archive(url, w, so, opts))
        return out
    with ThreadPoolExecutor(n, thread_name_prefix="dedupdask-thumbs") as ex:
        for part in ex.map(
            lambda kv: _read_one_archive(kv[0], kv[1], so, opts), by_archive.items()
        ):
            out.update(part)
    return out


# -- which images: global index -> archive, member, caption... ---------------------------------------
