"""Image classifiers the toolkit did not make, trained here in seconds on data generated so that colour and
crop decide the class, then run through `toolkit predict` three ways: by options, by --preprocess-config and
as an Optimum-style folder. Each must agree (top-1) on at least 99.5% of its test images with the model's
own preprocessing (torchvision's or timm's transform, run here, feeding the same ONNX file to onnxruntime).

  rgb       RGB NCHW 64x64, torchvision Resize(73) + CenterCrop(64) + ImageNet mean/std (timm's crop_pct 0.875);
            test images 2:1 with another class's colour at both ends, which the centre crop removes
  caffe     NHWC BGR 48x48, 0-255 minus a BGR mean, std 1, stretched (Caffe-era)
  letterbox RGB NCHW 64x64, timm's crop_mode border (the colour that decides is at one end of a 2:1 image)
  fashion   gray 1x28x28 on real Fashion-MNIST (Debian's dataset-fashion-mnist), fed 112x112 copies

Beside each, the setting a user would get wrong (the digit pipeline, RGB for BGR, a centre crop for a
letterbox) is measured too and must disagree often: the test can fail. The engine paths (worker processes,
Ray) must give the same rows as the in-process decode.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import cli
from toolkit.errors import EXIT_OK
# The drawing pad's real X server (a session-scoped Xvfb; tests using it are marked gui).
from test_draw import display, xvfb  # noqa: F401

torch = pytest.importorskip("torch")
T = pytest.importorskip("torchvision.transforms")
pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "magenta": (220, 30, 210), "cyan": (30, 210, 220)}
CLASSES = list(COLOURS)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE_BGR_MEAN = (103.94, 116.78, 123.68)
FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
N_TRAIN, N_TEST = 800, 400
AGREEMENT = 0.995


def scene(rng, cls: int, kind: str) -> Image.Image:
    """A generated photo: gray noise, the class's colour where the model's geometry keeps it, and (``centre``)
    another class's colour where its centre crop cuts, or (``end``) nothing of it in the middle."""
    short = int(rng.integers(60, 100))
    h, w = (short, 2 * short) if rng.random() < 0.5 else (2 * short, short)
    a = rng.integers(70, 150, (h, w, 3)).astype(np.int16)
    colour = np.array(COLOURS[CLASSES[cls]], np.int16)
    other = np.array(COLOURS[CLASSES[(cls + 1 + rng.integers(len(CLASSES) - 1)) % len(CLASSES)]], np.int16)
    s = short * 6 // 10
    if kind in ("centre", "plain"):
        y0, x0 = (h - s) // 2, (w - s) // 2
        a[y0:y0 + s, x0:x0 + s] = colour
        if kind == "centre":  # the long ends, outside the centre crop: a distractor as large as the square
            d = short * 9 // 20
            if h > w:
                a[:d], a[-d:] = other, other
            else:
                a[:, :d], a[:, -d:] = other, other
    else:  # "end": the class at one end of the long side
        y0, x0 = (0 if rng.random() < 0.5 else h - s, (w - s) // 2) if h > w else ((h - s) // 2, 0 if rng.random() < 0.5 else w - s)
        a[y0:y0 + s, x0:x0 + s] = colour
    a += rng.integers(-12, 13, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


@dataclass
class Foreign:
    name: str
    classes: list[str]
    own: object  # the model's own preprocessing: PIL image -> float tensor in the model's input layout
    options: list[str]  # what `toolkit predict` is given
    wrong: list[str]  # the options a user would likely get wrong
    config: tuple[str, dict]  # (file name, content) for --preprocess-config
    folder: dict  # file name -> content beside model.onnx
    folder_options: list[str]  # what the folder cannot say (only BGR)
    onnx: Path = None
    images: Path = None


class NHWC(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.permute(0, 3, 1, 2))


def small_cnn(channels: int, classes: int, size: int) -> torch.nn.Module:
    """Two strided convolutions (a 1/8 map) into a linear layer: trains in a few seconds on two busy cores."""
    side = -(-(-(-size // 4)) // 2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 8, 5, stride=4, padding=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * side * side, classes))


def train(net, x: np.ndarray, y: np.ndarray, epochs: int = 3) -> None:
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for i in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i]), yt[i]).backward()
            opt.step()
    net.eval()


def export(net, shape, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(2, *shape), str(path), input_names=["pixel_values"],
                          output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    return path


def hf_config(kind: str, **kw) -> dict:
    base = {"do_normalize": True, "do_rescale": True, "do_resize": True, "rescale_factor": 1 / 255,
            "image_processor_type": kind, "do_convert_rgb": True}
    return {**base, **kw}


def timm_config(size, crop_mode, crop_pct, mean, std, labels) -> dict:
    return {"architecture": "small_cnn", "num_classes": len(labels), "label_names": labels,
            "pretrained_cfg": {"input_size": list(size), "interpolation": "bilinear", "crop_pct": crop_pct,
                               "crop_mode": crop_mode, "mean": list(mean), "std": list(std),
                               "num_classes": len(labels)}}


def id2label(labels) -> dict:
    return {"id2label": {str(i): c for i, c in enumerate(labels)}}


def colour_models() -> list[Foreign]:
    labels = ",".join(CLASSES)
    rgb_own = T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor(), T.Normalize(*IMAGENET)])
    caffe_own = T.Compose([T.Resize((48, 48)), T.PILToTensor(),
                           T.Lambda(lambda t: (t.flip(0).float() - torch.tensor(CAFFE_BGR_MEAN)[:, None, None])
                                    .permute(1, 2, 0))])
    from timm.data import create_transform

    box_own = create_transform(input_size=(3, 64, 64), is_training=False, interpolation="bilinear",
                               mean=IMAGENET[0], std=IMAGENET[1], crop_pct=1.0, crop_mode="border")
    mean, std = ",".join(map(str, IMAGENET[0])), ",".join(map(str, IMAGENET[1]))
    bgr_mean = ",".join(map(str, CAFFE_BGR_MEAN))
    return [
        Foreign("rgb", CLASSES, rgb_own, ["--preprocess", "image", "--labels", labels, "--mean", mean, "--std", std],
                ["--labels", labels, "--mean", mean, "--std", std],
                ("config.json", timm_config((3, 64, 64), "center", 0.875, *IMAGENET, CLASSES)),
                {"preprocessor_config.json": hf_config("BitImageProcessor", size={"shortest_edge": 73},
                                                       do_center_crop=True, crop_size={"height": 64, "width": 64},
                                                       resample=2, image_mean=list(IMAGENET[0]),
                                                       image_std=list(IMAGENET[1])),
                 "config.json": id2label(CLASSES)}, []),
        Foreign("caffe", CLASSES, caffe_own,
                ["--preprocess", "image", "--fit", "stretch", "--channel-order", "bgr", "--scale", "1",
                 "--mean", bgr_mean, "--std", "1", "--labels", labels],
                ["--preprocess", "image", "--fit", "stretch", "--scale", "1", "--mean", bgr_mean, "--std", "1",
                 "--labels", labels],
                ("preprocessor_config.json", hf_config("ViTImageProcessor", size={"height": 48, "width": 48},
                                                       resample=2, do_rescale=False, image_mean=list(CAFFE_BGR_MEAN),
                                                       image_std=[1.0, 1.0, 1.0])),
                {"preprocessor_config.json": hf_config("ViTImageProcessor", size={"height": 48, "width": 48},
                                                       resample=2, do_rescale=False, image_mean=list(CAFFE_BGR_MEAN),
                                                       image_std=[1.0, 1.0, 1.0]),
                 "config.json": id2label(CLASSES)}, ["--channel-order", "bgr"]),
        Foreign("letterbox", CLASSES, box_own,
                ["--preprocess", "image", "--fit", "letterbox", "--pad-value", "124,116,104", "--labels", labels,
                 "--mean", mean, "--std", std],
                ["--preprocess", "image", "--labels", labels, "--mean", mean, "--std", std],
                ("config.json", timm_config((3, 64, 64), "border", 1.0, *IMAGENET, CLASSES)),
                {"config.json": timm_config((3, 64, 64), "border", 1.0, *IMAGENET, CLASSES)}, []),
    ]


def read_idx(name: str) -> np.ndarray:
    data = gzip.decompress((FASHION / name).read_bytes())
    return np.frombuffer(data, np.uint8, offset=16 if "images" in name else 8)


def fashion_model() -> Foreign:
    own = T.Compose([T.Grayscale(), T.Resize((28, 28)), T.ToTensor(), T.Normalize((0.286,), (0.353,))])
    labels = ",".join(FASHION_CLASSES)
    gray = dict(size={"height": 28, "width": 28}, resample=2, image_mean=[0.286], image_std=[0.353],
                do_convert_rgb=False)
    return Foreign("fashion", FASHION_CLASSES, own,
                   ["--preprocess", "image", "--fit", "stretch", "--mean", "0.286", "--std", "0.353", "--labels", labels],
                   ["--mean", "0.286", "--std", "0.353", "--labels", labels],
                   ("config.json", timm_config((1, 28, 28), "squash", 1.0, (0.286,), (0.353,), FASHION_CLASSES)),
                   {"preprocessor_config.json": hf_config("ViTImageProcessor", **gray),
                    "config.json": id2label(FASHION_CLASSES)}, [])


def own_inputs(model: Foreign, images: list[Image.Image]) -> np.ndarray:
    return torch.stack([model.own(im) for im in images]).numpy()


def onnx_top1(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"pixel_values": x[i:i + 256]})[0] for i in range(0, len(x), 256)]).argmax(1)


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """The four models, trained on their own preprocessing's output, with their test images written as files."""
    root = tmp_path_factory.mktemp("image_models")
    rng = np.random.default_rng(0)
    models = colour_models()
    kinds = {"rgb": "centre", "caffe": "plain", "letterbox": "end"}
    for m in models:
        y = rng.integers(0, len(CLASSES), N_TRAIN + N_TEST)
        images = [scene(rng, int(c), kinds[m.name]) for c in y]
        x = own_inputs(m, images[:N_TRAIN])
        net = small_cnn(3, len(CLASSES), 48 if m.name == "caffe" else 64)
        train(NHWC(net) if m.name == "caffe" else net, x, y[:N_TRAIN].astype(np.int64))
        m.onnx = export(NHWC(net) if m.name == "caffe" else net, x.shape[1:], root / f"{m.name}.onnx")
        m.images = write_images(root / m.name, images[N_TRAIN:], "png")
    if FASHION.is_dir():
        m = fashion_model()
        train_x = read_idx("train-images-idx3-ubyte.gz").reshape(-1, 28, 28)[:4000]
        train_y = read_idx("train-labels-idx1-ubyte.gz")[:4000].astype(np.int64)
        x = ((train_x.astype(np.float32) / 255 - 0.286) / 0.353)[:, None]
        net = small_cnn(1, 10, 28)
        train(net, x, train_y, epochs=3)
        m.onnx = export(net, (1, 28, 28), root / "fashion.onnx")
        test = read_idx("t10k-images-idx3-ubyte.gz").reshape(-1, 28, 28)[:N_TEST]
        big = [Image.fromarray(t, "L").resize((112, 112), Image.Resampling.BICUBIC) for t in test]
        m.images = write_images(root / "fashion", big, "png")
        models.append(m)
    return {m.name: m for m in models}


def write_images(folder: Path, images, suffix: str) -> Path:
    folder.mkdir()
    for i, im in enumerate(images):
        im.save(folder / f"{i:04d}.{suffix}")
    return folder


def reference(model: Foreign) -> np.ndarray:
    """Top-1 of the model fed by its own preprocessing, on the very files predict reads (decoded by Pillow)."""
    files = sorted(model.images.iterdir())
    images = [Image.open(f).convert("RGB") for f in files]
    return onnx_top1(model.onnx, own_inputs(model, images))


def predicted(model: Foreign, tmp_path: Path, *args) -> np.ndarray:
    out = tmp_path / f"{model.name}-{len(list(tmp_path.iterdir()))}.csv"
    result = CliRunner().invoke(cli, ["predict", str(model.images), "-o", str(out), *map(str, args)])
    assert result.exit_code == EXIT_OK, result.output
    return labels_in(out, model)


def labels_in(out: Path, model: Foreign) -> np.ndarray:
    with open(out, newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    index = {c: i for i, c in enumerate(model.classes)}
    return np.array([index.get(r["label"], -1) for r in rows])  # blank (digit pipeline): no label


def routes(model: Foreign, tmp_path: Path) -> dict[str, list]:
    config = tmp_path / f"{model.name}-{model.config[0]}"
    config.write_text(json.dumps(model.config[1]))
    folder = tmp_path / f"{model.name}-folder"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(model.onnx.read_bytes())
    for name, content in model.folder.items():
        (folder / name).write_text(json.dumps(content))
    labels = [] if "label_names" in json.dumps(model.config[1]) else ["--labels", ",".join(model.classes)]
    return {"options": ["--model", model.onnx, *model.options],
            "config": ["--model", model.onnx, "--preprocess-config", config, *labels,
                       *(["--channel-order", "bgr"] if model.name == "caffe" else [])],
            "folder": ["--model", folder, *model.folder_options]}


AGREEMENTS: dict = {}


@pytest.mark.parametrize("name", ["rgb", "caffe", "letterbox", "fashion"])
def test_foreign_model_agrees_with_its_own_preprocessing(foreign, tmp_path, name):
    if name not in foreign:
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION} (Debian package dataset-fashion-mnist)")
    model = foreign[name]
    expected = reference(model)
    for route, args in routes(model, tmp_path).items():
        agreement = float((predicted(model, tmp_path, *args) == expected).mean())
        AGREEMENTS[(name, route)] = agreement
        print(f"{name} {route}: {agreement:.2%} of {len(expected)}")
        assert agreement >= AGREEMENT, (name, route, agreement)
    wrong = float((predicted(model, tmp_path, "--model", model.onnx, *model.wrong) == expected).mean())
    print(f"{name} wrong options {' '.join(model.wrong)}: {wrong:.2%}")
    assert wrong < 0.8, (name, wrong)


def test_engines_give_the_same_rows_in_image_mode(foreign, tmp_path):
    """Decoding workers (forced, also before the spec is known: a stamped file) and in-process decoding agree."""
    model = foreign["rgb"]
    stamped = tmp_path / "stamped.onnx"
    result = CliRunner().invoke(cli, ["export", str(model.onnx), "--out", str(stamped), *model.options])
    assert result.exit_code == EXIT_OK, result.output
    inline = predicted(model, tmp_path, "--model", model.onnx, "--workers", "0", *model.options)
    workers = predicted(model, tmp_path, "--model", stamped, "--workers", "2")
    np.testing.assert_array_equal(inline, workers)
    np.testing.assert_array_equal(workers, reference(model))


def test_ray_engine_gives_the_local_rows_in_image_mode(foreign, tmp_path):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the cluster extra is not installed")
    model = foreign["letterbox"]
    local = predicted(model, tmp_path, "--model", model.onnx, *model.options)
    # In a process of its own: Ray caches its authentication token per process, and a local instance started
    # in the test process would leave that cache behind for tests/test_ray.py's token-authenticated cluster.
    out = tmp_path / "ray.csv"
    proc = subprocess.run([sys.executable, "-m", "toolkit", "predict", str(model.images), "-o", str(out),
                           "--model", str(model.onnx), "--engine", "ray", *map(str, model.options)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_OK, proc.stderr
    np.testing.assert_array_equal(local, labels_in(out, model))


@pytest.mark.gui
@pytest.mark.parametrize("name", ["rgb", "fashion"])
def test_draw_pad_on_an_image_model(foreign, display, name):
    """The pad's canvas is an image: an image model gets it through its own pipeline (colour or luma pixels at
    its size), the preview shows them, and what the pad says is the model's prediction for them."""
    from test_draw import draw_by_handlers, shown_bars

    from toolkit.draw import DrawApp, open_window
    from toolkit.flags import PreprocessFlags
    from toolkit.runtime import Predictor

    if name not in foreign:
        pytest.skip("Fashion-MNIST is not installed")
    model = foreign[name]
    options = dict(zip(model.options[::2], model.options[1::2]))
    flags = PreprocessFlags.parse(labels=options["--labels"], mean=options["--mean"], std=options["--std"],
                                  preprocess="image", fit=options.get("--fit"))
    predictor = Predictor.open(model.onnx, "cpu", threads=1, flags=flags)
    root = open_window()
    pad = DrawApp(root, predictor)
    try:
        root.update()
        stroke = np.zeros((28, 28), np.uint8)
        stroke[6:22, 12:16] = 255
        draw_by_handlers(pad, stroke)
        pad.predict()
        pixels = pad.model_pixels()
        assert pixels.shape == predictor.contract.preprocess.pixel_shape
        probs = predictor.probabilities(pixels[None])[0]
        top = int(probs.argmax())
        assert pad.label.cget("text") == f"Prediction: {model.classes[top]} ({probs[top]:.1%})"
        assert sum(w for w, _ in shown_bars(pad)) == pytest.approx(1.0, abs=1e-3)
    finally:
        pad.quit()
