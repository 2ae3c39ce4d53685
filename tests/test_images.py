import numpy as np
import pytest
from PIL import Image

from ntire.errors import ImageError
from ntire.images import image_to_tensor, read_image, tensor_to_image, write_png


def test_png_round_trip_is_exact(tmp_path, photo):
    write_png(tmp_path / "a.png", photo)
    assert np.array_equal(read_image(tmp_path / "a.png"), photo)


def test_tensor_round_trip_rounds_and_clips(photo):
    t = image_to_tensor(photo)
    assert t.shape == (1, 3, 512, 512) and t.dtype.is_floating_point
    assert np.array_equal(tensor_to_image(t + 0.4), photo)
    assert tensor_to_image(t * 0 - 5).max() == 0
    assert tensor_to_image(t * 0 + 300).min() == 255


def test_greyscale_is_converted(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (8, 8, 3) and np.array_equal(out[..., 1], grey)


def test_opaque_alpha_is_dropped_but_transparency_refused(tmp_path, photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(read_image(tmp_path / "opaque.png"), photo)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    with pytest.raises(ImageError, match="clear.png.*transparent"):
        read_image(tmp_path / "clear.png")


def test_sixteen_bit_refused_naming_file(tmp_path):
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(ImageError, match="deep.png.*8 bits"):
        read_image(tmp_path / "deep.png")


def png_16bit(image: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand: Pillow cannot write 16-bit colour PNGs."""
    import struct
    import zlib

    h = image.shape[0]
    raw = b"".join(b"\x00" + image[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", image.shape[1], h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("channels, color_type", [(3, 2), (4, 6)])
def test_sixteen_bit_colour_is_refused_like_grey(tmp_path, channels, color_type):
    # Pillow opens these as 8-bit RGB(A), silently dropping the low byte.
    (tmp_path / "deep.png").write_bytes(png_16bit(np.full((4, 5, channels), 40000, np.uint16), color_type))
    with pytest.raises(ImageError, match=r"deep.png: RGBA?;16B \(16 bits per channel\).*8 bits.*convert"):
        read_image(tmp_path / "deep.png")
    grey = tmp_path / "grey.png"
    grey.write_bytes(png_16bit(np.full((4, 5), 40000, np.uint16), 0))
    with pytest.raises(ImageError, match="grey.png.*8 bits.*convert"):
        read_image(grey)


def test_garbage_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with almost no data behind it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, monkeypatch):
    import warnings

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(100_000, 100_000))
    with pytest.raises(ImageError) as refused:
        read_image(bomb)
    assert str(refused.value).startswith(f"{bomb}: 100000x100000 pixels (10000 MP), over the limit of 268 MP")
    assert "NTIRE_MAX_PIXELS" in str(refused.value)
    # Under the limit but over Pillow's 89 MP: no raw warning, just the truncated data named.
    big = tmp_path / "big.png"
    big.write_bytes(bomb_png(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match=f"{big}: cannot decode image"):
            read_image(big)
    monkeypatch.setenv("NTIRE_MAX_PIXELS", "50M")
    with pytest.raises(ImageError, match="10000x10000 pixels .* over the limit of 50 MP"):
        read_image(big)
    monkeypatch.setenv("NTIRE_MAX_PIXELS", "lots")
    from ntire.errors import ConfigError

    with pytest.raises(ConfigError, match="NTIRE_MAX_PIXELS='lots'"):
        read_image(big)


def test_undecodable_bytes_name_the_file_not_a_buffer(tmp_path):
    from ntire.images import decode_image

    with pytest.raises(ImageError) as refused:
        decode_image(b"not an image at all", "shard-000001.tar:0801.png")
    assert "BytesIO" not in str(refused.value) and str(refused.value).startswith("shard-000001.tar:0801.png: ")

