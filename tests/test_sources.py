"""Source listing: folders, globs, lists, list files, letter case, loose images, offsets."""

from __future__ import annotations

import io
import tarfile

import pytest
from PIL import Image

from dedupdask.sources import list_sources, select_offsets


def _touch_tar(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        ti = tarfile.TarInfo("x.txt")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"x"))


@pytest.fixture
def tree(tmp_path):
    for rel in ["b/00001.TAR", "a/00000.tar.gz", "c/sub/00002.Zip", "00003.tgz", "z.TAR.GZ"]:
        _touch_tar(tmp_path / rel)
    (tmp_path / "notes.md").write_text("not an archive")
    return tmp_path


def test_folder_recursive_sorted_any_case(tree):
    srcs = list_sources(str(tree))
    names = [s.name for s in srcs]
    assert names == ["00003.tgz", "a__00000.tar.gz", "b__00001.TAR", "c__sub__00002.Zip", "z.TAR.GZ"]
    assert [s.kind for s in srcs] == ["tar", "tar", "tar", "zip", "tar"]
    assert all(s.url.startswith(str(tree)) for s in srcs)


def test_glob_list_and_list_file(tree):
    g = list_sources(str(tree / "*" / "*.tar*"))
    assert [s.name for s in g] == ["a__00000.tar.gz"]  # fnmatch is case-sensitive per glob
    lst = list_sources([str(tree / "b" / "00001.TAR"), str(tree / "a" / "00000.tar.gz")])
    assert [s.name for s in lst] == ["a__00000.tar.gz", "b__00001.TAR"]
    listing = tree / "shards.txt"
    listing.write_text(f"# my shards\n{tree / 'z.TAR.GZ'}\n\n{tree / '00003.tgz'}\n")
    assert [s.name for s in list_sources(str(listing))] == ["00003.tgz", "z.TAR.GZ"]


def test_offsets_half_open(tree):
    srcs = list_sources(str(tree))
    assert [s.name for s in select_offsets(srcs, 1, 3)] == ["a__00000.tar.gz", "b__00001.TAR"]
    assert len(select_offsets(srcs, 0, 0)) == 5
    assert [s.name for s in select_offsets(srcs, 4, 0)] == ["z.TAR.GZ"]
    with pytest.raises(ValueError, match="min_offset=9"):
        select_offsets(srcs, 9, 0)


def test_loose_images_folder(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(tmp_path / f"im{i}.png")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "sub" / "x.JPG")
    srcs = list_sources(str(tmp_path))
    assert [(s.name, s.kind, len(s.members)) for s in srcs] == [
        ("images-00000", "folder", 3),
        ("sub__images-00000", "folder", 1),
    ]


def test_nothing_matched_names_the_input(tmp_path):
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ValueError, match=str(tmp_path)):
        list_sources(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nope"):
        list_sources(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="empty list"):
        list_sources([])
