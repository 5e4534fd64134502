"""Hostile and unusual uploads: each gets a clean RGB image or one clear ImageError."""

import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.common import PHOTO, encode, png_bomb
from lstmkit.images import ImageError, load_image


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (encode(PHOTO, "JPEG")[:400], "damaged|truncated"),
    (b"<!DOCTYPE html><html><body>hello</body></html>", "HTML"),
    (b"just some text pretending to be a photo", "not an image"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "SVG"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="5" height="5"/></svg>', "SVG"),
    (encode(PHOTO, "PNG")[:60], "damaged|truncated"),
    (b"GIF89a" + b"\xff" * 20, "damaged|truncated|not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "damaged|not an image"),
])
def test_bad_files_get_one_clear_error(data, message):
    with pytest.raises(ImageError, match=message) as err:
        load_image(data)
    text = str(err.value)
    assert text.endswith(".") and "\n" not in text and "Traceback" not in text


def test_decompression_bomb_is_refused_before_decoding():
    import tracemalloc

    data = png_bomb()
    assert len(data) < 2_000_000
    tracemalloc.start()
    with pytest.raises(ImageError, match="30000x30000|too many pixels"):
        load_image(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50_000_000  # nowhere near the 900 MB the pixels would take


def test_size_limit_is_enforced_before_reading(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(encode(PHOTO, "JPEG") + b"\0" * 3000)
    with pytest.raises(ImageError, match="limit"):
        load_image(path, max_bytes=1000)
    with pytest.raises(ImageError, match="limit"):
        load_image(path.read_bytes(), max_bytes=1000)
    with pytest.raises(ImageError, match="No such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_one_pixel_image_works():
    image = load_image(encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"))
    assert image.size == (1, 1) and image.mode == "RGB" and image.getpixel((0, 0)) == (10, 200, 30)


def test_sixteen_bit_png_is_scaled_not_clipped():
    array = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    image = load_image(encode(Image.fromarray(array), "PNG"))
    assert image.mode == "RGB"
    grey = np.asarray(image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and 100 < grey.mean() < 155


def test_palette_png_with_and_without_transparency():
    pal = PHOTO.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    assert load_image(encode(pal, "PNG")).mode == "RGB"
    pal.info["transparency"] = 0
    image = load_image(encode(pal, "PNG", transparency=0))
    assert image.mode == "RGB"


def test_cmyk_jpeg_becomes_rgb():
    image = load_image(encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "JPEG"))
    r, g, b = image.getpixel((5, 5))
    assert image.mode == "RGB" and r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # invisible red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    image = load_image(encode(rgba, "PNG"))
    assert image.getpixel((5, 5)) == (255, 255, 255) and image.getpixel((0, 0)) == (0, 0, 255)
    la = Image.new("LA", (4, 4), (0, 0))
    assert load_image(encode(la, "PNG")).getpixel((1, 1)) == (255, 255, 255)


def test_animated_gif_uses_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, b = load_image(data).getpixel((8, 8))
    assert r > 200 and g < 50 and b < 50


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 20))  # black band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display rotated 90 degrees clockwise
    loaded = load_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)
    top = np.asarray(loaded)[:8].mean()
    assert top < 80  # the black band is now at the top


def test_webp_bmp_tiff_load():
    for fmt in ("WEBP", "BMP", "TIFF"):
        image = load_image(encode(PHOTO, fmt))
        assert image.size == (80, 60) and image.mode == "RGB"


def test_large_jpeg_is_decoded_at_a_reduced_scale_when_asked():
    big = Image.new("RGB", (4000, 3000), (120, 130, 140))
    data = encode(big, "JPEG", quality=70)
    small = load_image(data, draft_size=224)
    assert 448 <= min(small.size) < 1500  # at least twice the model's size, far below full size
    assert load_image(data).size == (4000, 3000)


def test_pil_images_and_file_objects_are_accepted():
    assert load_image(PHOTO.convert("L")).mode == "RGB"
    assert load_image(io.BytesIO(encode(PHOTO, "PNG"))).size == (80, 60)


def test_a_photo_keeps_its_cache_key_when_copied_and_loses_it_when_changed(tmp_path):
    """The feature and detection caches key a photo by its bytes: a dataset copied to a new
    place (new paths, new modification times) keeps its features; an edited photo does not."""
    import os
    import shutil

    from lstmkit.images import image_key

    first = tmp_path / "a" / "photo.jpg"
    first.parent.mkdir()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(first)
    copy = tmp_path / "b" / "other-name.jpg"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    os.utime(copy, ns=(1, 1))
    assert image_key(first) == image_key(copy)
    Image.new("RGB", (8, 8), (10, 200, 10)).save(first)
    os.utime(first, ns=(2, 2))
    assert image_key(first) != image_key(copy)
