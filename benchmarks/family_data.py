"""Benchmarks helper: the pictures, look-alikes and shards of ``quality_families.py``.

* **Originals** are the packaged pictures of ``quality.py`` (scikit-image / scikit-learn
  photos, Debian wallpapers) and ``quality_tiers.py`` (Tux Paint photo and cartoon stamps,
  Plasma wallpapers, Colobot textures, an Openclipart subset), RGB on white, <= 512 px, one
  per picture (identical pixels, or the same 16 x 16 thumbnail, or its mirror image, kept once;
  Tux Paint's ``*_mirror`` stamps left out).
  The photos, wallpapers and stamps get copies; Openclipart drawings and Colobot textures are
  distractors without copies.
* **Look-alikes** are labelled groups of distinct pictures that are variants of one another,
  none of which gets a copy: emoji in their six skin tones (rendered from Debian's
  ``fonts-noto-color-emoji``), GNOME's light/dark wallpaper pairs, the Ubuntu MATE colour
  series, Plasma's dark variants, Colobot texture series (``relief01``, ``relief02``, ...),
  Tux Paint stamps of the same subject (``frog`` / ``frog-1``, ``gnu-baby`` /
  ``gnu-baby-stand``) and scikit-image's stereo motorcycle pair.
* **Assets** that copies borrow and that are never in the shards: stickers (emoji, and
  Openclipart drawings cut out of their white background) and inset pictures (stamps and
  drawings kept out of the set).
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from bench_images import flatten
from edit_families import FAMILIES, Assets, cells, make_copy
from PIL import Image, ImageDraw, ImageFont, features

from dedupdask.decode import to_rgb

EMOJI_FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SKIN_TONES = ("", "\U0001f3fb", "\U0001f3fc", "\U0001f3fd", "\U0001f3fe", "\U0001f3ff")
TONED_EMOJI = ("\U0001f44d", "\U0001f44b", "\U0001f9d1", "\U0001f64b", "\U0001f476", "\U0001f44c")
STICKER_EMOJI = ("\U0001f602", "\u2764\ufe0f", "\U0001f525", "\U0001f60d", "\u2b50", "\U0001f389",
                 "\U0001f440", "\U0001f4af", "\U0001f60e", "\U0001f923", "\U0001f680", "\U0001f308")  # fmt: skip
GNOME_PAIRS = ("adwaita", "grid", "licorice", "pixels", "symbolic", "truchet", "wood")
MATE_SERIES = ("Ubuntu-Mate-Cold-no-logo", "Ubuntu-Mate-Dark-no-logo",
               "Ubuntu-Mate-Radioactive-no-logo", "Ubuntu-Mate-Warm-no-logo")  # fmt: skip
PLASMA_DARK = ("Flow", "Kay", "Patak")
# Colobot texture series used as look-alikes; "desert" and "res" are left out because some of
# their members are one texture with markers drawn on it (an overlay copy, not a look-alike).
# Other members of numbered series (relief05, ...) are not used at all: they would be
# unlabelled look-alikes of the chosen ones.
COLOBOT_SERIES = ("relief", "mars", "dirty", "cloud", "planet", "face", "kid")
COLOBOT_PER_SERIES = 4
COLOBOT_NUMBERED = re.compile(r"[a-z]+\d+")

ROLE_COLUMNS = ["key", "filename", "role", "name", "source", "family", "level", "group",
                "split", "lookalike", "lookalike_kind", "edit"]  # fmt: skip


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little")


# -- packaged files ---------------------------------------------------------------------------
def deb_members(cache: Path, pkg: str, want: Callable[[str], bool]) -> dict[str, bytes]:
    """Members of a cached ``.deb`` (``apt-get download``-ed by quality*.py) whose path matches."""
    found = sorted((cache / "debs").glob(f"{pkg}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", pkg], cwd=cache / "debs", capture_output=True)
        found = sorted((cache / "debs").glob(f"{pkg}_*.deb"))
        if not found:
            return {}
    out = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(found[-1])], stdout=subprocess.PIPE) as p:
        with tarfile.open(fileobj=p.stdout, mode="r|*") as tf:
            for m in tf:
                name = m.name.lstrip("./")
                if m.isfile() and want(name):
                    out[name] = tf.extractfile(m).read()
    return out


def render_emoji(font_path: str, text: str, side: int = 160) -> Image.Image:
    """One emoji (skin-tone sequences need Pillow's raqm layout) as RGBA, transparent around."""
    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    font = ImageFont.truetype(font_path, 109, layout_engine=layout)  # a CBDT font: 109 px only
    im = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((10, 10), text, font=font, embedded_color=True)
    im = im.crop(im.getbbox())
    return im.resize((side * im.width // max(im.size), side * im.height // max(im.size)), Image.Resampling.LANCZOS)


def _on_white(im: Image.Image, margin: float = 0.15) -> Image.Image:
    m = int(max(im.size) * margin)
    bg = Image.new("RGBA", (im.width + 2 * m, im.height + 2 * m), (255, 255, 255, 255))
    bg.alpha_composite(im, (m, m))
    return bg.convert("RGB")


def _cut_out(im: Image.Image) -> Image.Image:
    """A drawing on white as RGBA with the white background transparent."""
    arr = np.asarray(im.convert("RGB"))
    alpha = np.where(arr.min(axis=2) < 240, 255, 0).astype(np.uint8)
    out = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
    return out.crop(out.getbbox() or (0, 0, *out.size))


def _thumb_keys(im: Image.Image) -> tuple[bytes, bytes]:
    t = np.asarray(im.convert("L").resize((16, 16), Image.Resampling.BILINEAR)) // 8
    return t.tobytes(), t[:, ::-1].tobytes()


# -- the pool ---------------------------------------------------------------------------------
def load_pool(cache: Path, log: Callable[[str], None]) -> tuple[dict[str, Image.Image], list[str]]:
    """Every packaged picture (name -> RGB), one per picture, and notes on what was dropped."""
    import quality
    import quality_tiers

    photos = quality.load_photos(cache, log)
    photos.update(quality_tiers.load_extra_photos(cache, log))
    photos = quality_tiers.dedupe_pixels(photos)
    seen: dict[bytes, str] = {}
    out, notes = {}, []
    for name in sorted(photos):
        im = photos[name]
        if name.endswith("_mirror"):  # Tux Paint ships mirror images of some stamps: flip copies
            notes.append(f"{name} (a mirror image of {name[: -len('_mirror')]})")
            continue
        k, mirrored = _thumb_keys(im)
        if k in seen or mirrored in seen:
            notes.append(f"{name} (same picture as {seen.get(k, seen.get(mirrored))})")
            continue
        seen[k] = name
        out[name] = im
    return out, notes


def _stem(name: str) -> str:
    return name.rsplit("/", 1)[-1].rsplit("__", 1)[-1]


def in_texture_series(name: str) -> bool:
    """A numbered Colobot texture (``relief05``): a look-alike of its series, never a distractor."""
    return name.startswith("colobot-common-textures/") and bool(COLOBOT_NUMBERED.fullmatch(_stem(name)))


def lookalike_groups(cache: Path, pool: dict[str, Image.Image], log) -> tuple[dict[str, Image.Image], pd.DataFrame]:
    """Extra look-alike pictures (not in the pool) and ``name, group, kind`` of every member."""
    extra: dict[str, Image.Image] = {}
    rows: list[tuple[str, str, str]] = []

    def add_group(gid: str, kind: str, names: list[str]) -> None:
        names = [n for n in names if n in pool or n in extra]
        if len(names) >= 2:
            rows.extend((n, gid, kind) for n in names)

    # emoji in six skin tones
    font = deb_members(cache, "fonts-noto-color-emoji", lambda n: n == EMOJI_FONT)
    font_path = None
    if font:
        font_path = cache / "emoji" / Path(EMOJI_FONT).name
        font_path.parent.mkdir(parents=True, exist_ok=True)
        font_path.write_bytes(font[EMOJI_FONT])
    if font_path and features.check("raqm"):
        for e in TONED_EMOJI:
            names = []
            for t in SKIN_TONES:
                n = f"emoji/{ord(e[0]):x}" + (f"-{ord(t):x}" if t else "")
                extra[n] = _on_white(render_emoji(str(font_path), e + t))
                names.append(n)
            add_group(f"emoji-{ord(e[0]):x}", "emoji skin tones", names)
    else:
        log("WARNING: no emoji font or no raqm layout in Pillow: no skin-tone look-alikes")
    # GNOME light / dark wallpapers
    dark = deb_members(cache, "gnome-backgrounds",
                       lambda n: any(n.endswith(f"/{s}-d.webp") for s in GNOME_PAIRS))  # fmt: skip
    for path, data in dark.items():
        s = Path(path).stem[:-2]
        extra[f"lookalike/gnome/{s}-d"] = flatten(Image.open(io.BytesIO(data)))
        add_group(f"gnome-{s}", "wallpaper light/dark", [f"deb/gnome-backgrounds/{s}-l", f"lookalike/gnome/{s}-d"])
    # Ubuntu MATE colour series
    mate = deb_members(cache, "mate-backgrounds", lambda n: Path(n).stem in MATE_SERIES[1:])
    for path, data in mate.items():
        extra[f"lookalike/mate/{Path(path).stem}"] = flatten(Image.open(io.BytesIO(data)))
    add_group("mate-series", "wallpaper colour series",
              [f"deb/mate-backgrounds/{MATE_SERIES[0]}"] + [f"lookalike/mate/{s}" for s in MATE_SERIES[1:]])  # fmt: skip
    # Plasma wallpapers and their dark variants
    Image.MAX_IMAGE_PIXELS = 2 * 10**8
    pdark = deb_members(cache, "plasma-workspace-wallpapers",
                        lambda n: any(f"/wallpapers/{d}/contents/images_dark/" in n for d in PLASMA_DARK))  # fmt: skip
    for d in PLASMA_DARK:
        best = None
        for path, data in pdark.items():
            if f"/{d}/" not in path:
                continue
            w, h = (int(v) for v in Path(path).stem.split("x"))
            if w >= h and (best is None or w * h > best[0]):
                best = (w * h, data)
        light = [n for n in pool if n.startswith("plasma-workspace-wallpapers/") and f"__{d}__" in n]
        if best and light:
            extra[f"lookalike/plasma/{d}-dark"] = flatten(Image.open(io.BytesIO(best[1])))
            add_group(f"plasma-{d}", "wallpaper dark variant", [light[0], f"lookalike/plasma/{d}-dark"])
    # Colobot texture series
    for s in COLOBOT_SERIES:
        names = sorted(n for n in pool if n.startswith("colobot-common-textures/")
                       and re.fullmatch(rf"{s}\d+", Path(_stem(n)).stem))  # fmt: skip
        add_group(f"colobot-{s}", "texture series", names[:COLOBOT_PER_SERIES])
    # Tux Paint stamps of one subject: frog / frog-1, snail / snail2, gnu-baby / gnu-baby-stand
    stamps = {n: _stem(n) for n in pool if n.startswith("tuxpaint-stamps-default/")}
    by_dir: dict[str, list[str]] = {}
    for n in stamps:
        by_dir.setdefault(n.rsplit("__", 1)[0], []).append(n)
    used: set[str] = set()
    for _, names in sorted(by_dir.items()):
        for a in sorted(names):
            for b in sorted(names):
                sa, sb = stamps[a], stamps[b]
                if a >= b or a in used or b in used:
                    continue
                base_a, base_b = re.sub(r"[-_]?\d+$", "", sa), re.sub(r"[-_]?\d+$", "", sb)
                if base_a == base_b or sb.startswith(sa + "-") or sb.startswith(sa + "_") \
                        or sa.startswith(sb + "-") or sa.startswith(sb + "_"):  # fmt: skip
                    add_group(f"stamp-{sa}", "stamp of the same subject", [a, b])
                    used.update((a, b))
    # the same scene from another viewpoint
    add_group("stereo", "stereo pair", ["skimage/motorcycle_left", "skimage/motorcycle_right"])
    groups = pd.DataFrame(rows, columns=["name", "group", "kind"]).drop_duplicates("name")
    return extra, groups


def make_assets(cache: Path, pool: dict[str, Image.Image], reserved: list[str], log) -> Assets:
    """Stickers (emoji + cut-out drawings) and insets, from pictures kept out of the shards."""
    stickers: list[Image.Image] = []
    font_path = cache / "emoji" / Path(EMOJI_FONT).name
    notes = []
    if font_path.exists():
        stickers += [render_emoji(str(font_path), e, 128) for e in STICKER_EMOJI]
    else:
        notes.append("no emoji font: stickers are drawings only")
    drawings = [n for n in reserved if n.startswith("openclipart-png/")]
    stickers += [_cut_out(pool[n]) for n in drawings[:24]]
    insets = [pool[n] for n in reserved if not n.startswith("openclipart-png/")] + [pool[n] for n in drawings[24:]]
    return Assets(stickers, insets, notes)


# -- shards -----------------------------------------------------------------------------------
def _jpeg(im: Image.Image, q: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    return buf.getvalue()


def plan_copies(n_sources: int, copies: int, rng: np.random.Generator) -> list[list[tuple[str, int]]]:
    """``copies`` (family, level) cells per source, each of another group, every cell as often."""
    pool: list[tuple[str, int]] = []
    need = n_sources * copies
    while len(pool) < need + len(FAMILIES) * 3:
        block = cells()
        pool += [block[i] for i in rng.permutation(len(block))]
    plan = []
    for _ in range(n_sources):
        mine: list[tuple[str, int]] = []
        i = 0
        while len(mine) < copies:
            f, lv = pool[i]
            if all(FAMILIES[f].group != FAMILIES[g].group for g, _ in mine):
                mine.append(pool.pop(i))
            else:
                i += 1
        plan.append(mine)
    return plan


def build_shards(
    pool: dict[str, Image.Image],
    lookalikes: pd.DataFrame,
    sources: list[str],
    distractors: list[str],
    assets: Assets,
    out: Path,
    *,
    copies: int = 3,
    n_shards: int = 8,
    seed: int = 0,
) -> pd.DataFrame:
    """Write the tar shards, ``images.csv`` (one row per image) and ``ground_truth.csv``."""
    from dedupdask.datasets import write_shard

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    la = lookalikes.set_index("name")
    originals = [(n, "source") for n in sources] + [(n, "distractor") for n in distractors] \
        + [(n, "lookalike") for n in la.index]  # fmt: skip
    order = rng.permutation(len(originals))
    members: list[list[tuple[str, bytes]]] = [[] for _ in range(n_shards)]
    shard_names = [f"{s:05d}.tar" for s in range(n_shards)]
    rows, orig_rows = [], {}
    for pos, i in enumerate(order):
        name, role = originals[int(i)]
        shard = pos % n_shards
        data = _jpeg(pool[name])
        key = f"{shard_names[shard]}/o{pos:05d}.jpg"
        members[shard] += [(f"o{pos:05d}.jpg", data), (f"o{pos:05d}.txt", name.encode())]
        g = la.loc[name] if name in la.index else None
        rows.append((key, str(out / key), role, name, int(pos), "", -1, "", "",
                     "" if g is None else g["group"], "" if g is None else g["kind"], ""))  # fmt: skip
        orig_rows[name] = (pos, shard, data)
    plan = plan_copies(len(sources), copies, rng)
    j = 0
    for name, cells_ in zip(sources, plan, strict=True):
        pos, shard, data = orig_rows[name]
        img = to_rgb(Image.open(io.BytesIO(data)))
        for family, level in cells_:
            copy, desc = make_copy(img, family, level, rng, assets)
            target = (shard + 1 + int(rng.integers(0, n_shards - 1))) % n_shards
            key = f"{shard_names[target]}/c{j:05d}.jpg"
            members[target] += [(f"c{j:05d}.jpg", copy), (f"c{j:05d}.txt", b"")]
            f = FAMILIES[family]
            rows.append((key, str(out / key), "copy", name, pos, family, level, f.group,
                         "held-out" if f.held_out else "tune", "", "", desc))  # fmt: skip
            j += 1
    for s in range(n_shards):
        mem = members[s]
        pairs = [mem[i : i + 2] for i in range(0, len(mem), 2)]
        pairs = [pairs[i] for i in rng.permutation(len(pairs))]  # copies interleaved with originals
        write_shard(str(out / shard_names[s]), [m for p in pairs for m in p], "tar")
    images = pd.DataFrame(rows, columns=ROLE_COLUMNS)
    images.to_csv(out / "images.csv", index=False)
    orig_file = images[images["role"] == "source"].set_index("source")["filename"]
    cp = images[images["role"] == "copy"]
    pd.DataFrame({"filename_a": cp["source"].map(orig_file).to_numpy(), "filename_b": cp["filename"].to_numpy(),
                  "edit": (cp["family"] + ":" + cp["level"].astype(str)).to_numpy()}
                 ).to_csv(out / "ground_truth.csv", index=False)  # fmt: skip
    return images
