"""Test data for removal lists and clean shards: three small shards (tar, zip, tgz) with
planted exact copies, a larger copy, captions of different lengths, a sample with two images
of which only one is a copy, a broken image, a blank image and extra members."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dedupdask.datasets import random_picture, write_shard

NAMES = {"a": "00000.tar", "b": "00001.zip", "c": "sub/00002.tgz"}


def _jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Shards:
    root: str
    paths: dict[str, str]  # "a"/"b"/"c" -> path
    members: dict[str, list[tuple[str, bytes]]]


def make_clean_shards(root: str, seed: int = 7) -> Shards:
    """Write the shards under ``root``; see the module docstring for what is planted."""
    rng = np.random.default_rng(seed)
    pics = [random_picture(rng, (160, 120)) for _ in range(24)]
    data = [_jpeg(p) for p in pics]
    members: dict[str, list[tuple[str, bytes]]] = {"a": [], "b": [], "c": []}

    def add(shard: str, key: str, img: bytes, caption: str, ext: str = "jpg") -> None:
        members[shard].append((f"{key}.{ext}", img))
        members[shard].append((f"{key}.txt", caption.encode()))
        members[shard].append((f"{key}.json", json.dumps({"key": key}).encode()))

    for i in range(8):
        add("a", f"a{i:03d}", data[i], f"picture {i}")
    members["a"].append(("a005.cls", b"5\n"))  # an extra member of a kept sample
    # a sample of two images: its jpg is a copy of a003, its png is unique -> the sample stays
    members["a"].append(("a_multi.jpg", data[3]))
    buf = io.BytesIO()
    pics[20].save(buf, "PNG")
    members["a"].append(("a_multi.png", buf.getvalue()))
    members["a"].append(("a_multi.txt", b"two images"))
    members["a"].append(("a_broken.jpg", data[4][: len(data[4]) // 3]))  # invalid
    members["a"].append(("a_broken.txt", b"a broken image"))
    add("a", "a_blank", _jpeg(Image.new("RGB", (160, 120), (128, 128, 128))), "blank")
    for i in range(8, 16):
        add("b", f"b{i:03d}", data[i], f"picture {i}")
    add("b", "b_copy0", data[0], "a much longer caption of picture zero")  # exact copy of a000
    members["b"].append(("b_copy0.cls", b"0\n"))  # extra member of a removable sample
    for i in range(16, 20):
        add("c", f"c{i:03d}", data[i], f"picture {i}")
    add("c", "c_big1", _jpeg(pics[1].resize((320, 240), Image.Resampling.LANCZOS)), "big")
    add("c", "c_copy2", data[2], "copy of two")  # exact copy of a002
    add("c", "c_copy2b", data[2], "another copy of two, longest caption of the three")
    paths = {}
    for shard, rel in NAMES.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fmt = {"a": "tar", "b": "zip", "c": "tgz"}[shard]
        write_shard(path, members[shard], fmt)
        paths[shard] = path
    return Shards(root, paths, members)
