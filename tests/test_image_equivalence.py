"""The image pipeline against the libraries whose conventions it reproduces, run here themselves:
torchvision (Resize + CenterCrop + ToTensor + Normalize, on Pillow images as its ImageFolder loads them),
timm's eval transform (crop modes center, squash, border) read from the config.json timm itself writes, and
Hugging Face image processors (ViT, BiT, ConvNeXT, DeiT: the Pillow backend, and the default torchvision
backend measured) read from the preprocessor_config.json transformers itself writes.

The toolkit's model input (``to_model_pixels`` + ``normalize``) must equal theirs exactly: the same Pillow
resize calls, the same float32 arithmetic. Where a library computes differently (Hugging Face multiplies
by 1/255 in float64, equal after rounding to float32; its torchvision backend resizes tensors, not Pillow
images) the bound is stated.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from toolkit.flags import InputFacts, preprocess_from_flags
from toolkit.model_config import read_preprocess_config
from toolkit.predict.decode import decode_image, rgb_array
from toolkit.preprocess import INTERPOLATIONS, PreprocessSpec, model_input, to_model_pixels

torch = pytest.importorskip("torch")
T = pytest.importorskip("torchvision.transforms")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Image sizes (h, w): square, portrait, landscape, odd, a long strip, one smaller than the model, photo-like.
SOURCES = [(64, 64), (300, 200), (200, 301), (257, 223), (17, 640), (40, 30), (600, 800)]
FILTERS = list(INTERPOLATIONS)
TV_MODES = {name: getattr(T.InterpolationMode, name.upper()) for name in FILTERS}


def photo(h: int, w: int, seed: int = 0) -> Image.Image:
    """A test image with edges, gradients and noise in every channel (what resampling filters differ on)."""
    rng = np.random.default_rng(seed + h * 1000 + w)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x // 7 + y // 5) % 2) * 255], -1)
    a = (a * 0.7 + rng.integers(0, 77, (h, w, 3))).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def toolkit_input(im: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The toolkit's model input for one image, through the decode module (PNG bytes) as predict reads files."""
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return spec.normalize(to_model_pixels(decode_image(buf.getvalue(), "image"), spec))[0]


def image_spec(h=64, w=64, **kw) -> PreprocessSpec:
    kw.setdefault("mean", IMAGENET[0])
    kw.setdefault("std", IMAGENET[1])
    return PreprocessSpec(height=h, width=w, channels=3, mode="image", **kw)


# ---------------------------------------------------------------- torchvision

@pytest.mark.parametrize("interpolation", FILTERS)
@pytest.mark.parametrize("resize", [64, 73, 50])  # 50 < the crop: torchvision pads with 0 first
def test_crop_equals_torchvision_resize_centercrop(interpolation, resize):
    spec = image_spec(fit="crop", resize=resize, interpolation=interpolation)
    ref = T.Compose([T.Resize(resize, interpolation=TV_MODES[interpolation]), T.CenterCrop(64), T.ToTensor(),
                     T.Normalize(*IMAGENET)])
    for h, w in SOURCES:
        im = photo(h, w)
        np.testing.assert_array_equal(toolkit_input(im, spec), ref(im).numpy(), err_msg=f"{h}x{w}")


@pytest.mark.parametrize("interpolation", FILTERS)
def test_stretch_equals_torchvision_resize_pair(interpolation):
    spec = image_spec(48, 80, fit="stretch", interpolation=interpolation)
    ref = T.Compose([T.Resize((48, 80), interpolation=TV_MODES[interpolation]), T.ToTensor(), T.Normalize(*IMAGENET)])
    for h, w in SOURCES:
        im = photo(h, w)
        np.testing.assert_array_equal(toolkit_input(im, spec), ref(im).numpy(), err_msg=f"{h}x{w}")


def test_default_crop_pct_is_timms_and_resize_224_from_256():
    spec = image_spec(224, 224)
    assert (spec.fit, spec.crop_pct, spec.resize) == ("crop", 0.875, 256)
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(*IMAGENET)])
    for h, w in [(768, 1024), (600, 800), (333, 500)]:
        im = photo(h, w)
        np.testing.assert_array_equal(toolkit_input(im, spec), ref(im).numpy())


def test_bgr_and_luma_orders():
    """BGR is RGB's channels reversed (means given in the model's order); luma is Pillow's convert("L"),
    which torchvision's Grayscale uses."""
    im = photo(120, 90)
    bgr = image_spec(fit="stretch", mean=(0.406, 0.456, 0.485), std=(0.225, 0.224, 0.229), channel_order="bgr")
    ref = T.Compose([T.Resize((64, 64)), T.ToTensor(), T.Normalize(*IMAGENET)])(im).numpy()
    np.testing.assert_array_equal(toolkit_input(im, bgr), ref[::-1])
    gray = PreprocessSpec(height=64, width=64, channels=1, mode="image", fit="stretch", mean=0.5, std=0.25)
    ref = T.Compose([T.Grayscale(), T.Resize((64, 64)), T.ToTensor(), T.Normalize((0.5,), (0.25,))])(im).numpy()
    np.testing.assert_array_equal(toolkit_input(im, gray), ref)


# ---------------------------------------------------------------- timm

@pytest.fixture(scope="module")
def timm_config(tmp_path_factory):
    """config.json files written by timm's own save_for_hf, for a real architecture's pretrained_cfg."""
    timm = pytest.importorskip("timm")

    def write(crop_mode, crop_pct, interpolation, size=64):
        model = timm.create_model("resnet18", pretrained=False, num_classes=4)
        cfg = dict(model.pretrained_cfg, input_size=(3, size, size), crop_mode=crop_mode, crop_pct=crop_pct,
                   interpolation=interpolation)
        model.pretrained_cfg = cfg
        folder = tmp_path_factory.mktemp(f"timm_{crop_mode}_{interpolation}")
        timm.models.save_for_hf(model, folder, model_config={"label_names": ["a", "b", "c", "d"]})
        return folder / "config.json", cfg

    return write


def _timm_eval(cfg):
    from timm.data import create_transform

    return create_transform(input_size=cfg["input_size"], is_training=False, interpolation=cfg["interpolation"],
                            mean=cfg["mean"], std=cfg["std"], crop_pct=cfg["crop_pct"], crop_mode=cfg["crop_mode"])


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("crop_pct,interpolation", [(0.875, "bilinear"), (0.95, "bicubic"), (1.0, "lanczos"),
                                                    (0.9, "nearest")])
def test_timm_eval_transform_from_its_config(timm_config, crop_mode, crop_pct, interpolation):
    path, cfg = timm_config(crop_mode, crop_pct, interpolation)
    flags = read_preprocess_config(path)
    assert flags.labels == ("a", "b", "c", "d")
    _, spec = preprocess_from_flags(path, flags, InputFacts(channels=3, height=64, width=64, output_width=4))
    ref = _timm_eval(cfg)
    for h, w in SOURCES:
        im = photo(h, w, seed=1)
        np.testing.assert_array_equal(toolkit_input(im, spec), ref(im).numpy(), err_msg=f"{crop_mode} {h}x{w}")


# ---------------------------------------------------------------- Hugging Face

def _hf(name, **kw):
    transformers = pytest.importorskip("transformers")
    return getattr(transformers, name)(**kw)


HF_CASES = {
    "vit": ("ViTImageProcessor", dict(size={"height": 64, "width": 64})),
    "vit_bicubic_48x80": ("ViTImageProcessor", dict(size={"height": 48, "width": 80}, resample=3)),
    "bit": ("BitImageProcessor", dict(size={"shortest_edge": 72}, crop_size={"height": 64, "width": 64})),
    "bit_lanczos_pad": ("BitImageProcessor", dict(size={"shortest_edge": 50}, crop_size={"height": 64, "width": 64},
                                                 resample=1)),
    "convnext": ("ConvNextImageProcessor", dict(size={"shortest_edge": 64}, crop_pct=0.875)),
    "deit": ("DeiTImageProcessor", dict(size={"height": 73, "width": 73}, crop_size={"height": 64, "width": 64})),
}


def _hf_case(tmp_path, case):
    name, kw = HF_CASES[case]
    pil = _hf(name + "Pil", **kw)
    pil.save_pretrained(tmp_path)  # the config exactly as transformers writes it
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["image_processor_type"] == name
    flags = read_preprocess_config(tmp_path / "preprocessor_config.json")
    h, w = flags.input_size[1:]
    _, spec = preprocess_from_flags(tmp_path, flags.over(type(flags)(labels=("x", "y"))),
                                    InputFacts(channels=3, height=h, width=w, output_width=2))
    return pil, _hf(name, **kw), spec


@pytest.mark.parametrize("case", list(HF_CASES))
def test_huggingface_processor_from_its_config(tmp_path, case):
    """The Pillow backend: the same Pillow resize, Hugging Face's crop offsets and padding; its float64 multiply
    by 1/255 rounds to the same float32 as the toolkit's float32 division here: exactly equal."""
    pil, _, spec = _hf_case(tmp_path, case)
    for h, w in SOURCES:
        im = photo(h, w, seed=2)
        ours = toolkit_input(im, spec)
        theirs = pil(im, return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape
        np.testing.assert_array_equal(ours, theirs, err_msg=f"{case} {h}x{w}")


@pytest.mark.parametrize("case", ["vit", "bit", "convnext"])
def test_huggingface_torchvision_backend_within_one_level(tmp_path, case):
    """transformers' default (torchvision tensor) backend resizes differently from Pillow: the toolkit, which
    follows Pillow as the Hugging Face Pillow backend and torchvision's PIL path do, stays within 1/255
    of it on all but a small share of pixels."""
    _, fast, spec = _hf_case(tmp_path, case)
    levels = []
    for h, w in SOURCES:
        im = photo(h, w, seed=3)
        theirs = fast(im, return_tensors="np")["pixel_values"][0]
        diff = np.abs(toolkit_input(im, spec) - theirs) * np.asarray(spec.stds, np.float32)[:, None, None] * 255
        levels.append(diff.ravel())
    levels = np.concatenate(levels)
    assert np.mean(levels <= 1.0 + 1e-3) >= 0.99, np.percentile(levels, [50, 99, 100])


# ---------------------------------------------------------------- decoding to RGB

def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"),
                                      ("CMYK", "TIFF"), ("I;16", "PNG"), ("L", "PNG"), ("1", "PNG"), ("RGB", "WEBP"),
                                      ("F", "TIFF"), ("RGB", "PNG")])
def test_decode_equals_pillow_convert_rgb(mode, fmt):
    """Every mode decodes to what Pillow's convert("RGB") gives (alpha dropped, palette expanded, CMYK and
    16-bit as Pillow converts them): what torchvision's ImageFolder and Hugging Face feed their models."""
    base = photo(40, 56, seed=4)
    if mode == "I;16":
        im = Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 3))
    elif mode == "F":
        im = Image.fromarray(np.asarray(base.convert("L"), np.float32) * 1.5)
    elif mode == "P":
        im = base.quantize(17)
        if fmt == "PNG":
            im.info["transparency"] = 3
    else:
        im = base.convert(mode)
    data = _encoded(im, fmt, **({"transparency": 3} if mode == "P" and fmt == "PNG" else {}))
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(rgb_array(decode_image(data, "image")), expected)


def test_large_rgb_png_from_a_file_equals_pillow(tmp_path):
    """An 8-bit RGB PNG over 256 kB is read whole and decoded by libspng: the very pixels Pillow gives."""
    from toolkit.predict.decode import read_image

    path = tmp_path / "big.png"
    photo(600, 800, seed=6).save(path)
    assert path.stat().st_size > 256 * 1024
    np.testing.assert_array_equal(rgb_array(read_image(path, "image")), np.asarray(Image.open(path).convert("RGB")))


def test_decode_applies_exif_orientation():
    im = photo(30, 50, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    data = _encoded(im, "JPEG", exif=exif.tobytes(), quality=95)
    from PIL import ImageOps

    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    got = rgb_array(decode_image(data, "image"))
    assert got.shape == (50, 30, 3)
    np.testing.assert_array_equal(got, expected)


def test_digit_spec_json_unchanged_and_old_files_read():
    """A digit spec writes exactly the keys it always wrote (older toolkits read it); files without a mode read as digit."""
    old = {"height": 28, "width": 28, "pixel_scale": 255.0, "mean": 0.5, "std": 0.5, "polarity": "light-on-dark"}
    spec = PreprocessSpec.from_dict(old)
    assert spec.mode == "digit" and spec.version == 1
    assert set(spec.to_dict()) == {*old, "layout", "channels"}
    image = image_spec(224, 224)
    d = image.to_dict()
    assert d["version"] == 2 and d["resize"] == 256 and d["crop_pct"] == 0.875
    assert PreprocessSpec.from_dict(json.loads(image.to_json())) == image
    with pytest.raises(ValueError, match="version 3"):
        PreprocessSpec.from_dict({**d, "version": 3})
    with pytest.raises(ValueError, match="digit-mode"):
        PreprocessSpec.from_dict({**old, "fit": "stretch"})


def test_lookup_table_equals_normalize_in_image_mode():
    spec = image_spec(32, 32, channel_order="bgr", mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    pixels = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(model_input(pixels, spec, spec.lookup_table()), spec.normalize(pixels))


@pytest.mark.parametrize("count", [0, 1, 5])
def test_model_input_in_blocks_equals_normalize(count):
    """200x200x3 images are converted two at a time: a batch of five ends in a block of one, none is left out."""
    spec = image_spec(200, 200, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    pixels = np.random.default_rng(count).integers(0, 256, (count, 200, 200, 3), dtype=np.uint8)
    got = model_input(pixels, spec)
    assert got.shape == (count, 3, 200, 200) and got.dtype == np.float32
    np.testing.assert_array_equal(got, spec.normalize(pixels))
