import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pacegeo.errors import InputError
from pacegeo.io import (
    PreprocessedImages,
    array_to_rgb,
    list_image_files,
    load_images,
    pil_to_rgb,
    read_image_rgb,
)

LOADS = [
    "ok_rgb.jpg",
    "grayscale.png",
    "gray16.png",
    "rgba.png",
    "palette.png",
    "cmyk.jpg",
    "webp_image.webp",
    "exif_rotated.jpg",
    "very_wide.png",
    "very_tall.png",
    "animated.gif",
]
REFUSED = ["tiny_13x9.png", "truncated.jpg", "empty.png", "not_an_image.jpg", "random_bytes.png"]


@pytest.fixture(scope="module")
def awkward(shared_dir) -> Path:
    return shared_dir / "data" / "awkward-images"


def upstream_preprocess(path: Path, mode: str, target: int = 518) -> torch.Tensor:
    """Independent re-statement of VGGT's per-image preprocessing (spec section 6), for comparison."""
    img = Image.open(path)
    if img.mode == "RGBA":
        img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
    img = img.convert("RGB")
    width, height = img.size
    if mode == "pad" and width < height:
        new_height, new_width = target, round(width * (target / height) / 14) * 14
    else:
        new_width, new_height = target, round(height * (target / width) / 14) * 14
    img = img.resize((new_width, new_height), Image.Resampling.BICUBIC)
    tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    if mode == "crop" and new_height > target:
        start = (new_height - target) // 2
        tensor = tensor[:, start : start + target]
    if mode == "pad":
        ph, pw = target - tensor.shape[1], target - tensor.shape[2]
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        tensor = torch.nn.functional.pad(tensor, pad, value=1.0)
    return tensor


def marker_image(width: int, height: int, x: int, y: int, half: int = 6) -> np.ndarray:
    """Black image with a white square centred on pixel (x, y)."""
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[y - half : y + half + 1, x - half : x + half + 1] = 255
    return rgb


# ------------------------------------------------------------------ awkward files


@pytest.mark.parametrize("name", LOADS)
def test_awkward_files_that_load(awkward, name):
    rgb = read_image_rgb(awkward / name)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    expected_hw = {"exif_rotated.jpg": (320, 240), "very_wide.png": (60, 1600), "very_tall.png": (1600, 60)}
    assert rgb.shape[:2] == expected_hw.get(name, (240, 320))
    for mode in ("crop", "pad"):
        result = load_images([awkward / name], mode=mode)
        assert result.images.dtype == torch.float32
        height, width = result.image_size_hw
        assert height % 14 == 0 and width % 14 == 0
        assert 0.0 <= result.images.min() and result.images.max() <= 1.0


@pytest.mark.parametrize("name", REFUSED)
def test_awkward_files_are_refused_clearly(awkward, name):
    with pytest.raises(InputError) as info:
        read_image_rgb(awkward / name)
    message = str(info.value)
    assert name in message and "\n" not in message
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        load_images([awkward / name], strict=True)


def test_awkward_folder_skips_bad_files_with_warnings(awkward, caplog):
    with caplog.at_level(logging.WARNING, logger="pacegeo.io.images"):
        result = load_images(awkward)
    assert sorted(result.names) == sorted(LOADS)
    assert sorted(Path(s.source).name for s in result.skipped) == sorted(REFUSED)
    for name in REFUSED:
        assert any(name in r.getMessage() for r in caplog.records)
    assert any("different shapes" in r.getMessage() for r in caplog.records)
    assert result.images.shape == (len(LOADS), 3, 518, 518)
    with pytest.raises(InputError):
        load_images(awkward, strict=True)


def test_conversions_match_expected_colours(awkward):
    ok = read_image_rgb(awkward / "ok_rgb.jpg").astype(float)
    gray = read_image_rgb(awkward / "grayscale.png").astype(float)
    gray16 = read_image_rgb(awkward / "gray16.png").astype(float)
    assert np.all(gray[..., 0] == gray[..., 2])
    # 16-bit data (a full-range gradient) is scaled, not clipped at 255.
    with Image.open(awkward / "gray16.png") as img:
        raw = np.asarray(img).astype(float)
    assert raw.max() > 255
    np.testing.assert_allclose(gray16[..., 1], raw * 255 / 65535, atol=0.5)
    assert len(np.unique(gray16)) > 200 and np.median(gray16) < 200
    for name in ("cmyk.jpg", "palette.png", "webp_image.webp", "animated.gif"):
        assert np.abs(read_image_rgb(awkward / name).astype(float) - ok).mean() < 10.0, name


def test_rgba_is_composited_onto_white(awkward):
    with Image.open(awkward / "rgba.png") as img:
        rgba = np.asarray(img).astype(float)
    expected = rgba[..., :3] * rgba[..., 3:] / 255 + 255 * (1 - rgba[..., 3:] / 255)
    assert np.abs(read_image_rgb(awkward / "rgba.png") - expected).max() <= 1.0


def test_exif_rotation_loads_upright(awkward):
    rgb = read_image_rgb(awkward / "exif_rotated.jpg")
    assert rgb.shape == (320, 240, 3)
    with Image.open(awkward / "exif_rotated.jpg") as img:
        stored = np.asarray(img.convert("RGB"))
    assert stored.shape == (240, 320, 3)
    np.testing.assert_array_equal(rgb, np.rot90(stored, k=-1))  # orientation 6: rotate clockwise
    result = load_images([awkward / "exif_rotated.jpg"])
    assert result.transforms[0].original_hw == (320, 240)
    assert result.image_size_hw == (518, 518)  # portrait: 518x691 cropped to 518x518


def test_odd_sizes_keep_multiples_of_14(awkward):
    wide = load_images([awkward / "very_wide.png"], mode="crop")
    assert wide.image_size_hw == (14, 518)
    tall = load_images([awkward / "very_tall.png"], mode="crop")
    assert tall.image_size_hw == (518, 518)
    assert tall.transforms[0].resized_hw == (13818, 518)
    wide_pad = load_images([awkward / "very_wide.png"], mode="pad")
    assert wide_pad.image_size_hw == (518, 518)
    assert wide_pad.transforms[0].content_box == (0, 252, 518, 266)
    tall_pad = load_images([awkward / "very_tall.png"], mode="pad", target_size=224)
    assert tall_pad.image_size_hw == (224, 224)
    assert tall_pad.transforms[0].resized_hw == (224, 14)
    # A side that would round to zero is kept at one patch instead of crashing.
    thin = load_images([np.zeros((14, 2000, 3), dtype=np.uint8)], mode="crop", target_size=224)
    assert thin.image_size_hw == (14, 224)


# ------------------------------------------------------------------ crop vs pad, upstream parity


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("name", ["ok_rgb.jpg", "rgba.png", "very_wide.png", "very_tall.png", "palette.png"])
def test_matches_upstream_preprocessing(awkward, name, mode):
    result = load_images([awkward / name], mode=mode)
    expected = upstream_preprocess(awkward / name, mode)
    torch.testing.assert_close(result.images[0], expected, atol=0, rtol=0)


def test_crop_and_pad_shapes_for_4_3_landscape(awkward):
    crop = load_images([awkward / "ok_rgb.jpg"], mode="crop")
    assert crop.images.shape == (1, 3, 392, 518)
    pad = load_images([awkward / "ok_rgb.jpg"], mode="pad")
    assert pad.images.shape == (1, 3, 518, 518)
    assert pad.transforms[0].content_box == (0, 63, 518, 455)
    assert torch.all(pad.images[0, :, :63] == 1.0) and torch.all(pad.images[0, :, 455:] == 1.0)
    small = load_images([awkward / "ok_rgb.jpg"], mode="crop", target_size=224)
    assert small.images.shape == (1, 3, 168, 224)


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_room_folder_mixed_sizes(shared_dir, mode):
    room = shared_dir / "data" / "images" / "room"
    result = load_images(room, mode=mode)
    assert len(result) == 8 and result.names[0] == "no_overlap_1.png"
    assert result.image_size_hw == ((392, 518) if mode == "crop" else (518, 518))
    assert {t.original_hw for t in result.transforms} == {(384, 512), (960, 1280)}
    for index, name in [(0, "no_overlap_1.png"), (1, "no_overlap_2.jpg")]:
        expected = upstream_preprocess(room / name, mode)
        torch.testing.assert_close(result.images[index], expected, atol=0, rtol=0)


def test_different_shapes_are_padded_white_and_centred(awkward, tmp_path, caplog):
    shutil.copy(awkward / "ok_rgb.jpg", tmp_path / "a.jpg")
    shutil.copy(awkward / "very_tall.png", tmp_path / "b.png")
    with caplog.at_level(logging.WARNING, logger="pacegeo.io.images"):
        result = load_images(tmp_path, mode="crop")
    assert any("different shapes" in r.getMessage() for r in caplog.records)
    assert result.images.shape == (2, 3, 518, 518)
    first = result.transforms[0]
    assert first.final_hw == (518, 518) and (first.offset_x, first.offset_y) == (0, 63)
    assert torch.all(result.images[0, :, :63] == 1.0)
    center = first.to_original(np.array([258.5, 258.5]))
    np.testing.assert_allclose(center, [159.5, 119.5])


# ------------------------------------------------------------------ transforms


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("size", [(320, 240), (240, 320), (300, 200), (200, 600), (1000, 140)])
def test_center_pixel_maps_to_original_center(mode, size):
    width, height = size
    result = load_images([np.zeros((height, width, 3), dtype=np.uint8)], mode=mode)
    transform = result.transforms[0]
    model_h, model_w = result.image_size_hw
    center = transform.to_original(np.array([(model_w - 1) / 2, (model_h - 1) / 2]))
    # Exact up to the half-pixel left over when an odd crop or pad cannot be split evenly.
    expected = [(width - 1) / 2, (height - 1) / 2]
    np.testing.assert_allclose(center, expected, atol=0.5 * transform.scale_y + 1e-9)


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize(
    "size, marker",
    [((300, 200), (210, 60)), ((200, 600), (60, 250)), ((640, 480), (500, 400)), ((200, 600), (150, 330))],
)
def test_transform_locates_original_pixels(mode, size, marker):
    width, height = size
    result = load_images([marker_image(width, height, *marker)], mode=mode, target_size=224)
    transform = result.transforms[0]
    u, v = np.rint(transform.to_model(np.array(marker, dtype=float))).astype(int)
    assert result.images[0, :, v, u].min() > 0.8
    back = transform.to_original(transform.to_model(np.array(marker, dtype=float)))
    np.testing.assert_allclose(back, marker)


def test_transform_torch_points_and_intrinsics():
    result = load_images([np.zeros((480, 640, 3), dtype=np.uint8)], mode="crop")
    transform = result.transforms[0]
    assert result.image_size_hw == (392, 518)
    k_model = torch.tensor([[400.0, 0, 259], [0, 410.0, 196], [0, 0, 1]])
    k_orig = transform.intrinsics_to_original(k_model)
    assert isinstance(k_orig, torch.Tensor) and k_orig.dtype == torch.float32
    torch.testing.assert_close(k_orig[0, 0], torch.tensor(400.0 * 640 / 518))
    torch.testing.assert_close(k_orig[1, 1], torch.tensor(410.0 * 480 / 392))
    # A projected point lands on the mapped pixel in both images.
    point = torch.tensor([0.3, -0.2, 2.0])
    uv_model = (k_model @ point)[:2] / point[2]
    uv_orig = (k_orig @ point)[:2] / point[2]
    torch.testing.assert_close(transform.to_original(uv_model), uv_orig)
    torch.testing.assert_close(transform.intrinsics_to_model(k_orig), k_model)
    batched = result.intrinsics_to_original(k_model[None, None])
    torch.testing.assert_close(batched[0, 0], k_orig)
    corner = transform.to_original(np.array([518.0, 392.0]), convention="corner")
    np.testing.assert_allclose(corner, [640.0, 480.0])


# ------------------------------------------------------------------ listing and errors


def test_list_image_files_natural_sort_and_filters(tmp_path):
    pixel = Image.new("RGB", (16, 16))
    images = ["10.png", "2.png", "1.JPG", "img_b3.jpeg", "img_B20.webp", ".hidden.png"]
    for name in images + ["notes.txt", "x.png.bak"]:
        pixel.save(tmp_path / name, format="PNG")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_image_files(tmp_path)]
    assert names == ["1.JPG", "2.png", "10.png", "img_b3.jpeg", "img_B20.webp"]
    result = load_images(tmp_path)
    assert result.names == names


def test_folder_errors(tmp_path, awkward):
    with pytest.raises(InputError, match="not found"):
        load_images(tmp_path / "missing")
    with pytest.raises(InputError, match="no image files"):
        load_images(tmp_path)
    with pytest.raises(InputError, match="not found"):
        list_image_files(tmp_path / "missing")
    for name in REFUSED:
        shutil.copy(awkward / name, tmp_path / name)
    with pytest.raises(InputError, match="no readable images"):
        load_images(tmp_path)
    with pytest.raises(InputError, match="no images given"):
        load_images([])
    with pytest.raises(InputError, match="not found"):
        read_image_rgb(tmp_path / "nope.jpg")


def test_option_errors(awkward):
    with pytest.raises(InputError, match="mode"):
        load_images([awkward / "ok_rgb.jpg"], mode="stretch")
    with pytest.raises(InputError, match="multiple of 14"):
        load_images([awkward / "ok_rgb.jpg"], target_size=500)


# ------------------------------------------------------------------ in-memory inputs and bit depths


def test_in_memory_inputs(awkward):
    rgb = read_image_rgb(awkward / "ok_rgb.jpg")
    from_file = load_images([awkward / "ok_rgb.jpg"]).images[0]
    as_float = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    items = [rgb, Image.fromarray(rgb), as_float, torch.from_numpy(rgb).permute(2, 0, 1)]
    result = load_images(items)
    assert isinstance(result, PreprocessedImages) and len(result) == 4
    assert result.names == ["<image 0>", "<image 1>", "<image 2>", "<image 3>"]
    assert result.paths == [None] * 4
    for image in result.images:
        torch.testing.assert_close(image, from_file, atol=0, rtol=0)
    batch = load_images(np.stack([rgb, rgb]))
    assert batch.images.shape == (2, 3, 392, 518)
    gray = load_images([rgb[..., 0]]).images[0]
    assert torch.equal(gray[0], gray[1])


def test_in_memory_input_errors():
    with pytest.raises(InputError, match="in \\[0, 1\\]"):
        load_images([np.full((20, 20, 3), 200.0)], strict=True)
    with pytest.raises(InputError, match="smaller than one"):
        load_images([np.zeros((9, 13, 3), dtype=np.uint8)], strict=True)
    with pytest.raises(InputError, match="shape"):
        load_images([np.zeros((20, 20, 7), dtype=np.uint8)], strict=True)
    skipped = load_images([np.zeros((9, 13, 3), dtype=np.uint8), np.zeros((28, 28, 3), dtype=np.uint8)])
    assert len(skipped) == 1 and skipped.skipped[0].source == "<image 0>"


def test_sixteen_bit_and_int_modes_are_scaled(tmp_path):
    values = np.array([[0, 257 * 128, 65535, 1000]] * 14, dtype=np.uint16).repeat(4, axis=1)
    Image.fromarray(values).save(tmp_path / "g16.png")
    rgb = read_image_rgb(tmp_path / "g16.png")
    np.testing.assert_array_equal(rgb[0, ::4, 0], [0, 128, 255, 4])
    as_int = pil_to_rgb(Image.fromarray(values.astype(np.int32)))
    assert Image.fromarray(values.astype(np.int32)).mode == "I"
    np.testing.assert_array_equal(as_int, rgb)
    np.testing.assert_array_equal(array_to_rgb(values), rgb)


def test_palette_with_transparency_composited_on_white():
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.info["transparency"] = 0
    rgb = pil_to_rgb(img)
    assert np.all(rgb == 255)
