"""Preprocessing read from the config files that travel with models, without importing their libraries.

* a Hugging Face ``preprocessor_config.json`` (the image processors whose steps are exactly resize, centre
  crop, rescale, normalise: ViT, DeiT, BiT, ConvNeXT, CLIP, SigLIP, MobileNet v1/v2; their "Fast" and "Pil"
  variants document the same steps);
* a timm ``config.json`` (``pretrained_cfg``: input_size, interpolation, crop_pct, crop_mode, mean, std;
  ``label_names``);
* a folder laid out as an Optimum export: ``model.onnx``, ``preprocessor_config.json`` and ``config.json``
  with ``id2label`` (or a timm ``config.json`` alone).

Each becomes a ``PreprocessFlags`` (the command-line options it stands for, ``source`` naming the file).
transformers and timm are not edge dependencies, so their rules are written out here, and tested against
the libraries themselves (tests/test_image_equivalence.py). A key that would change pixels and is not
understood, a processor type whose steps differ, or a pixel-deciding key left out (its default would be
the library's, per class) is refused in one line naming it (ConfigError, exit 2): never guessed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import ConfigError, ModelError
from .flags import PreprocessFlags
from .preprocess import INTERPOLATIONS

MODEL_FILE = "model.onnx"
HF_CONFIG = "preprocessor_config.json"
MODEL_CONFIG = "config.json"
MAX_CONFIG_BYTES = 4 << 20  # a real config is a few kB; label lists of 20k classes stay far below this

# Hugging Face image processors whose preprocessing is resize -> centre crop -> rescale -> normalise, and
# how an integer ``size`` reads for each (default_to_square: True means height = width = size).
HF_PROCESSORS = {"ViTImageProcessor": True, "DeiTImageProcessor": True, "BitImageProcessor": False,
                 "ConvNextImageProcessor": False, "CLIPImageProcessor": False, "SiglipImageProcessor": False,
                 "MobileNetV1ImageProcessor": False, "MobileNetV2ImageProcessor": False}
HF_ALIASES = {"ViTFeatureExtractor": "ViTImageProcessor", "DeiTFeatureExtractor": "DeiTImageProcessor",
              "ConvNextFeatureExtractor": "ConvNextImageProcessor", "CLIPFeatureExtractor": "CLIPImageProcessor",
              "MobileNetV1FeatureExtractor": "MobileNetV1ImageProcessor",
              "MobileNetV2FeatureExtractor": "MobileNetV2ImageProcessor"}
HF_USED = {"image_processor_type", "feature_extractor_type", "do_resize", "size", "resample", "do_center_crop",
           "crop_size", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb",
           "crop_pct"}
# Keys that never change an image classifier's pixels (names, bookkeeping, segmentation labels, output format).
HF_HARMLESS = {"processor_class", "_processor_class", "image_processor_class", "do_reduce_labels", "reduce_labels",
               "return_tensors", "data_format", "input_data_format", "default_to_square", "model_input_names",
               "device", "disable_grouping", "pad_size", "do_pad"}

TIMM_USED = {"input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std"}
TIMM_HARMLESS = {"tag", "custom_load", "fixed_input_size", "num_classes", "pool_size", "first_conv", "classifier",
                 "license", "origin_url", "paper_ids", "paper_name", "notes", "hf_hub_id", "hf_hub_filename",
                 "architecture", "description", "test_input_size", "test_crop_pct", "min_input_size", "url", "file",
                 "source", "label_offset", "label_names", "label_descriptions", "hf_hub_revision"}
TIMM_TOP = {"architecture", "num_classes", "num_features", "global_pool", "pretrained_cfg", "label_names",
            "label_descriptions", "model_args", "_name_or_path"}
TIMM_CROP_MODES = {"center": "crop", "squash": "stretch", "border": "letterbox"}


def read_json(path) -> dict:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(path, f"{path.stat().st_size:,} bytes: too large for a preprocessing config")
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(path, "no such file") from None
    except IsADirectoryError:
        raise ConfigError(path, "is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(path, f"cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(path, f"is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(data, dict):
        raise ConfigError(path, f"holds a JSON {type(data).__name__}, expected an object")
    return data


def read_preprocess_config(path) -> PreprocessFlags:
    """A Hugging Face preprocessor_config.json or a timm config.json, told apart by their keys."""
    data = read_json(path)
    if "pretrained_cfg" in data:
        return timm_flags(data, path)
    if any(k in data for k in ("image_processor_type", "feature_extractor_type", "do_resize", "size")):
        return hf_flags(data, path)
    raise ConfigError(path, "is neither a Hugging Face preprocessor_config.json (image_processor_type, size, ...) "
                            "nor a timm config.json (pretrained_cfg)")


def read_model_dir(folder) -> tuple[str, PreprocessFlags]:
    """An Optimum-style export folder -> (its model.onnx, the preprocessing and labels its configs give)."""
    folder = Path(folder)
    model = folder / MODEL_FILE
    if not model.is_file():
        raise ModelError(folder, f"is a directory, not a model file, and no model folder either: it has no "
                                 f"{MODEL_FILE} (an Optimum-style export holds {MODEL_FILE}, {HF_CONFIG}, {MODEL_CONFIG})")
    hf, config = folder / HF_CONFIG, folder / MODEL_CONFIG
    if hf.exists():
        flags = hf_flags(read_json(hf), hf)
        if config.exists():
            labels = id2label(read_json(config), config)
            if labels is not None:
                flags = PreprocessFlags(**{**vars(flags), "labels": labels})
        return os.fspath(model), flags
    if config.exists():
        return os.fspath(model), read_preprocess_config(config)
    raise ConfigError(folder, f"has {MODEL_FILE} but neither {HF_CONFIG} nor a timm {MODEL_CONFIG}: give the "
                              "preprocessing with options instead of --model FOLDER")


def id2label(data: dict, path) -> tuple[str, ...] | None:
    """A transformers config.json's ``id2label`` as labels in output order (None when it has none)."""
    mapping = data.get("id2label")
    if mapping is None:
        return None
    if not isinstance(mapping, dict):
        raise ConfigError(path, "id2label is not an object of index -> label")
    try:
        indexed = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise ConfigError(path, "id2label has a key that is not an integer index") from None
    if sorted(indexed) != list(range(len(indexed))):
        raise ConfigError(path, f"id2label's indices are not 0 to {len(indexed) - 1}, each once")
    return _labels([indexed[i] for i in range(len(indexed))], path, "id2label")


def _labels(values, path, key) -> tuple[str, ...]:
    labels = [str(v) for v in values]
    if len(labels) < 2 or "" in labels or len(set(labels)) != len(labels):
        raise ConfigError(path, f"{key} must name at least 2 distinct, non-empty labels")
    return tuple(labels)


# ---------------------------------------------------------------- Hugging Face

def _unknown(data: dict, used: set, harmless: set, path, where: str) -> None:
    """Refuse the first key this reader would have to guess about (a ``do_*`` switched off changes nothing)."""
    for key in sorted(data):
        if key in used or key in harmless or (key.startswith("do_") and data[key] is False):
            continue
        raise ConfigError(path, f"{where}key {key!r} is not understood by the toolkit and may change the pixels "
                                "the model expects; refusing to guess (give the preprocessing with options)")


def _require(data: dict, key: str, path):
    if key not in data:
        raise ConfigError(path, f"does not say {key!r}: its default depends on the processor class; add it, or "
                                "give the preprocessing with options")
    return data[key]


def _hw(value, path, key, square: bool):
    """A size dict or integer -> ("box", (h, w)) or ("shortest", n)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ("box", (value, value)) if square else ("shortest", value)
    if isinstance(value, dict):
        if set(value) == {"height", "width"}:
            return "box", (_side(value["height"], path, key), _side(value["width"], path, key))
        if set(value) == {"shortest_edge"}:
            return "shortest", _side(value["shortest_edge"], path, key)
    raise ConfigError(path, f"{key} {json.dumps(value)} is not understood: expected {{height, width}} or "
                            "{shortest_edge} (longest_edge, max_height/max_width give images of varying size)")


def _side(value, path, key) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(path, f"{key} holds {value!r}, not a length in pixels")
    return value


def _numbers(value, path, key) -> tuple[float, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             for v in values):
        raise ConfigError(path, f"{key} holds {value!r}, not a number or a list of numbers")
    return tuple(float(v) for v in values)


def _resample(value, path, key) -> str:
    names = {code: name for name, code in INTERPOLATIONS.items()}
    if isinstance(value, int) and not isinstance(value, bool) and value in names:
        return names[value]
    if isinstance(value, str) and value.lower() in INTERPOLATIONS:
        return value.lower()
    raise ConfigError(path, f"{key} {value!r} is not one of Pillow's filters (0-5 or "
                            f"{', '.join(INTERPOLATIONS)})")


def hf_flags(data: dict, path) -> PreprocessFlags:
    """A Hugging Face image processor's config -> the options that give the same pixels."""
    kind = data.get("image_processor_type", data.get("feature_extractor_type"))
    if kind is None:
        raise ConfigError(path, "does not name its image_processor_type; the steps depend on it")
    base = HF_ALIASES.get(kind, kind)
    for suffix in ("Fast", "Pil"):
        base = base.removesuffix(suffix) if base.endswith(suffix) and base[:-len(suffix)] in HF_PROCESSORS else base
    if base not in HF_PROCESSORS:
        raise ConfigError(path, f"image processor {kind!r} is not one the toolkit reproduces (it reads "
                                f"{', '.join(sorted(HF_PROCESSORS))}); give the preprocessing with options")
    _unknown(data, HF_USED, HF_HARMLESS, path, "")
    if base != "ConvNextImageProcessor" and "crop_pct" in data:
        raise ConfigError(path, f"key 'crop_pct' is not a step of {kind}; refusing to guess")
    if _require(data, "do_resize", path) is not True:
        raise ConfigError(path, "do_resize is not true: the model would be fed images at their own size")
    how, size = _hw(_require(data, "size", path), path, "size", HF_PROCESSORS[base])
    values: dict = dict(preprocess="image", interpolation=_resample(_require(data, "resample", path), path, "resample"),
                        crop_offset="floor", source=str(path))
    crop = data.get("do_center_crop", False)
    if base == "ConvNextImageProcessor":
        if how != "shortest":
            raise ConfigError(path, "ConvNextImageProcessor's size must be {shortest_edge}")
        if size < 384:  # its rule: shorter side to int(shortest_edge / crop_pct), then a centre crop
            pct = _numbers(_require(data, "crop_pct", path), path, "crop_pct")[0]
            if not 0 < pct <= 1:
                raise ConfigError(path, f"crop_pct {pct} must be above 0 and at most 1")
            values.update(fit="crop", resize=int(size / pct), height=size, width=size)
        else:  # and at 384 or more, a plain stretch to shortest_edge x shortest_edge
            values.update(fit="stretch", resize=(size, size), height=size, width=size)
    elif crop is True:
        ch, cw = _hw(_require(data, "crop_size", path), path, "crop_size", True)[1]
        if how == "shortest":
            if ch != cw:
                raise ConfigError(path, "a non-square crop_size after a shortest_edge resize is not reproduced")
            values.update(fit="crop", resize=size)
        else:
            values.update(fit="stretch", resize=size)
        values.update(height=ch, width=cw)
    elif crop is not False:
        raise ConfigError(path, f"do_center_crop holds {crop!r}, expected true or false")
    elif how == "shortest":
        raise ConfigError(path, "size {shortest_edge} without do_center_crop gives images of varying size")
    else:
        values.update(fit="stretch", resize=size, height=size[0], width=size[1])
    rescale = _require(data, "do_rescale", path)
    if rescale is True:
        factor = _numbers(_require(data, "rescale_factor", path), path, "rescale_factor")[0]
        if factor <= 0:
            raise ConfigError(path, f"rescale_factor {factor} must be above 0")
        values["scale"] = 1.0 / factor
    elif rescale is False:
        values["scale"] = 1.0
    else:
        raise ConfigError(path, f"do_rescale holds {rescale!r}, expected true or false")
    if _require(data, "do_normalize", path) is True:
        values["mean"] = _numbers(_require(data, "image_mean", path), path, "image_mean")
        values["std"] = _numbers(_require(data, "image_std", path), path, "image_std")
        if 0 in values["std"]:
            raise ConfigError(path, "image_std holds a 0")
    else:
        values.update(mean=(0.0,), std=(1.0,))
    return _flags(values)


def _flags(values: dict) -> PreprocessFlags:
    """Config values -> flags; the model size they were made for goes in ``input_size`` (checked with the graph;
    the channel count is the graph's: a processor's config does not state it)."""
    values["input_size"] = (None, values.pop("height"), values.pop("width"))
    return PreprocessFlags(**values)


# ---------------------------------------------------------------- timm

def timm_flags(data: dict, path) -> PreprocessFlags:
    """timm's pretrained_cfg -> the options that give its eval transform's pixels; label_names as the labels."""
    _unknown(data, TIMM_TOP, set(), path, "top-level ")
    cfg = data["pretrained_cfg"]
    if not isinstance(cfg, dict):
        raise ConfigError(path, "pretrained_cfg is not an object")
    _unknown(cfg, TIMM_USED, TIMM_HARMLESS, path, "pretrained_cfg ")
    size = _require(cfg, "input_size", path)
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and v >= 1 for v in size)):
        raise ConfigError(path, f"input_size {size!r} is not [channels, height, width]")
    mode = cfg.get("crop_mode", "center")
    if mode not in TIMM_CROP_MODES:
        raise ConfigError(path, f"crop_mode {mode!r} is not one of timm's center, squash, border")
    pct = _numbers(cfg.get("crop_pct", 0.875), path, "crop_pct")[0]
    if not 0 < pct <= 1:
        raise ConfigError(path, f"crop_pct {pct} must be above 0 and at most 1")
    interpolation = _require(cfg, "interpolation", path)
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(path, f"interpolation {interpolation!r} is not one the toolkit reproduces "
                                f"({', '.join(INTERPOLATIONS)})")
    mean = _numbers(_require(cfg, "mean", path), path, "mean")
    std = _numbers(_require(cfg, "std", path), path, "std")
    if 0 in std:
        raise ConfigError(path, "std holds a 0")
    fit = TIMM_CROP_MODES[mode]
    values: dict = dict(preprocess="image", fit=fit, crop_pct=pct, interpolation=interpolation, mean=mean, std=std,
                        scale=255.0, source=str(path), input_size=tuple(size))
    if fit == "crop" and size[1] != size[2]:
        raise ConfigError(path, f"a non-square input_size {size} with crop_mode center (timm's ResizeKeepRatio) is "
                                "not reproduced")
    if fit == "letterbox":  # timm fills the border with the mean colour
        values["pad_value"] = tuple(round(255 * v) for v in (mean * 3 if len(mean) == 1 else mean))
    names = data.get("label_names", cfg.get("label_names"))
    if names is not None:
        if not isinstance(names, list):
            raise ConfigError(path, "label_names is not a list")
        values["labels"] = _labels(names, path, "label_names")
    return PreprocessFlags(**values)
