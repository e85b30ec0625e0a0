import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facecluster.imageio import ImageError, load_image
from facecluster.workdir import WorkDir, atomic_write_json, parse_shard, read_json, shard_range


def test_modes_decode_to_rgb_uint8(tmp_path):
    Image.new("L", (64, 64), 100).save(tmp_path / "l.png")
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(tmp_path / "a.png")  # fully transparent → black
    Image.fromarray(np.full((64, 64), 65535, np.uint16)).save(tmp_path / "s.png")
    Image.new("P", (64, 64)).save(tmp_path / "p.gif")
    Image.new("CMYK", (64, 64)).save(tmp_path / "c.jpg")
    for f in ["l.png", "a.png", "s.png", "p.gif", "c.jpg"]:
        a = load_image(tmp_path / f)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, f
    assert (load_image(tmp_path / "a.png") == 0).all()
    assert (load_image(tmp_path / "s.png") == 255).all()


def test_exif_rotation_applied(tmp_path):
    im = Image.new("RGB", (80, 40), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape[:2] == (80, 40)


def test_sizes_bounded(tmp_path):
    Image.new("RGB", (4000, 2000)).save(tmp_path / "big.jpg")
    Image.new("RGB", (10, 12)).save(tmp_path / "small.png")
    assert max(load_image(tmp_path / "big.jpg").shape[:2]) == 1024
    assert min(load_image(tmp_path / "small.png").shape[:2]) == 32


def test_phone_sized_photo_decodes_and_bombs_are_refused(tmp_path):
    # 11000 x 9100 = 100 MP: over Pillow's warning level (89 MP), a real phone photo for `detect`
    Image.new("L", (11000, 9100), 128).save(tmp_path / "phone.jpg", quality=50)
    assert max(load_image(tmp_path / "phone.jpg").shape[:2]) == 1024
    # a PNG header claiming 20000 x 10000 (200 MP): refused before any pixel is decoded
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 10000, 8, 0, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="too large"):
        load_image(tmp_path / "bomb.png")


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("hello"), "not an image"),
        (lambda p: os.mkdir(p), "directory"),
    ],
)
def test_unreadable_images(tmp_path, make, needle):
    p = tmp_path / "x.jpg"
    make(p)
    with pytest.raises(ImageError, match=needle):
        load_image(p)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_devices_and_fifos_are_refused_without_reading(tmp_path):
    # A FIFO would block the reader forever and /dev/zero never ends: refused by the file's type.
    os.mkfifo(tmp_path / "pipe.jpg")
    for p in (tmp_path / "pipe.jpg", "/dev/zero"):
        with pytest.raises(ImageError, match="not a regular file"):
            load_image(p)


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)).save(tmp_path / "f.jpg")
    data = (tmp_path / "f.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(tmp_path / "t.jpg")


def test_parse_shard_and_env(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    assert parse_shard(None) == (0, 1)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.setenv("FACECLUSTER_SHARDS", "3")
    assert parse_shard(None) == (2, 3)
    for bad in ["4/4", "x", "1/0", "-1/2"]:
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shard_ranges_cover_everything():
    for n_items in [0, 1, 5, 17]:
        for n in [1, 2, 3, 8]:
            rs = [shard_range(n_items, i, n) for i in range(n)]
            assert rs[0][0] == 0 and rs[-1][1] == n_items
            assert all(a[1] == b[0] for a, b in zip(rs, rs[1:]))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})

    class Boom(Exception):
        pass

    def boom(*a, **k):
        raise Boom

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(Boom):
        atomic_write_json(p, {"a": 2})
    assert read_json(p) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]


def test_is_fresh(tmp_path):
    wd = WorkDir(tmp_path)
    meta, art = tmp_path / "x.meta.json", tmp_path / "x"
    assert not wd.is_fresh(meta, "fp")
    atomic_write_json(meta, {"fingerprint": "fp"})
    assert wd.is_fresh(meta, "fp") and not wd.is_fresh(meta, "other")
    assert not wd.is_fresh(meta, "fp", art)
    meta.write_text("{broken")
    assert not wd.is_fresh(meta, "fp")
