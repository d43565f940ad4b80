"""Models the toolkit did not make: described by options, or stamped once, then predicted, benched,
inspected and drawn like the toolkit's own.

Each model is a tiny real training on real MNIST (a 2-layer MLP, seconds), saved with plain
onnx.helper (one with torch.onnx.export) in the shape its author chose: NHWC, 3 channels with per-channel
mean/std, a fixed batch of 1, a final Softmax, 32x32 input, word labels, dark-on-light digits. Its own
accuracy is computed here with numpy + onnxruntime only; `toolkit predict` on PNGs of the same digits
must reach the same accuracy. The bad cases are graphs built to be exactly the defect they name.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from toolkit.cli import cli
# The drawing pad's real X server and stroke helpers (a session-scoped Xvfb; its tests mark themselves gui).
from test_draw import display, draw_by_handlers, shown_bars, xvfb  # noqa: F401
from toolkit.errors import EXIT_ERROR, EXIT_GATE, EXIT_OK, EXIT_USAGE

DIGITS = [str(d) for d in range(10)]
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
N_TRAIN, N_TEST = 10000, 2000


@dataclass
class Spec:
    """How one foreign model wants its input, as its author would write it down."""

    name: str
    mean: tuple
    std: tuple
    scale: float = 255.0
    channels: int = 1
    layout: str = "NCHW"
    size: int = 28
    batch: int | None = None  # fixed batch size, or dynamic
    softmax: bool = False
    polarity: str = "light-on-dark"
    words: bool = False
    torch_export: bool = False

    def options(self, labels_file: Path) -> list[str]:
        opts = ["--labels", str(labels_file) if self.words else ",".join(DIGITS),
                "--mean", ",".join(map(str, self.mean)), "--std", ",".join(map(str, self.std))]
        if self.scale != 255.0:
            opts += ["--scale", str(self.scale)]
        if self.polarity != "light-on-dark":
            opts += ["--polarity", self.polarity]
        return opts

    def shape(self, batch) -> list:
        if self.layout == "NHWC":
            return [batch, self.size, self.size, self.channels]
        return [batch, self.channels, self.size, self.size]


SPECS = [
    Spec("nhwc_rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channels=3, layout="NHWC"),
    Spec("rgb", mean=(0.5, 0.4, 0.3), std=(0.25, 0.3, 0.35), channels=3),
    Spec("fixed1", mean=(0.1307,), std=(0.3081,), batch=1),
    Spec("softmax", mean=(0.5,), std=(0.5,), softmax=True, torch_export=True),
    Spec("s32", mean=(0.5,), std=(0.5,), size=32),
    Spec("words", mean=(0.5,), std=(0.5,), words=True),
    Spec("inverted", mean=(33.0,), std=(78.0,), scale=1.0, polarity="dark-on-light"),
]


def own_input(images: np.ndarray, spec: Spec) -> np.ndarray:
    """The model author's preprocessing, in plain numpy: no toolkit code."""
    x = images.astype(np.float32)
    if spec.size != 28:  # MNIST's 28x28 digits on a larger dark canvas, as LeNet's 32x32 input had them
        pad = (spec.size - 28) // 2
        x = np.pad(x, ((0, 0), (pad, spec.size - 28 - pad), (pad, spec.size - 28 - pad)))
    if spec.polarity == "dark-on-light":
        x = 255 - x
    x = np.repeat((x / np.float32(spec.scale))[..., None], spec.channels, axis=-1)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    return np.ascontiguousarray(x if spec.layout == "NHWC" else x.transpose(0, 3, 1, 2), dtype=np.float32)


def train_mlp(x: np.ndarray, y: np.ndarray, softmax: bool):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(int(np.prod(x.shape[1:])), 32), nn.ReLU(), nn.Linear(32, 10)]
    model = nn.Sequential(*layers, *([nn.Softmax(dim=1)] if softmax else []))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small: more threads only wait on each other (40x slower under load)
    for _ in range(3):
        for i in torch.randperm(len(xt)).split(64):
            out = model(xt[i])
            loss = nn.functional.nll_loss(out.clamp_min(1e-9).log(), yt[i]) if softmax else \
                nn.functional.cross_entropy(out, yt[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def save_with_onnx_helper(model, spec: Spec, path: Path) -> None:
    """Flatten, Gemm, Relu, Gemm (, Softmax): the trained weights in a graph written by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    first, last = model[1], model[3]
    weights = [numpy_helper.from_array(t.detach().numpy(), n) for t, n in
               ((first.weight, "w1"), (first.bias, "b1"), (last.weight, "w2"), (last.bias, "b2"))]
    out = "probs" if spec.softmax else "scores"
    nodes = [helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["z" if spec.softmax else out], transB=1)]
    if spec.softmax:
        nodes.append(helper.make_node("Softmax", ["z"], [out], axis=1))
    batch = spec.batch or "n"
    graph = helper.make_graph(nodes, spec.name, [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                               spec.shape(batch))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, 10])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="someone else")
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def save_with_torch_export(model, spec: Spec, path: Path) -> None:
    import torch

    import warnings

    dummy = torch.zeros(2, *spec.shape(2)[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (dummy,), None, input_names=["image"], output_names=["probabilities"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    program.save(str(path))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """The model's outputs with onnxruntime alone, in the batch size its graph demands."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    step = inp.shape[0] if isinstance(inp.shape[0], int) else len(x)
    return np.concatenate([session.run(None, {inp.name: x[i:i + step]})[0] for i in range(0, len(x), step)])


@dataclass
class Foreign:
    spec: Spec
    path: Path
    options: list[str]
    folder: Path  # PNGs of the test digits, in folders named after the model's labels
    own_accuracy: float
    own_outputs: np.ndarray = field(repr=False)


@pytest.fixture(scope="session")
def digit_pngs(mnist, tmp_path_factory):
    """The first N_TEST MNIST test digits as PNGs: 28x28 under digit and word folders, and padded to 32x32."""
    root = tmp_path_factory.mktemp("foreign_pngs")
    images, labels = mnist.test_images[:N_TEST], mnist.test_labels[:N_TEST]
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    for name, pixels, names in (("digits", images, DIGITS), ("words", images, WORDS), ("digits32", padded, DIGITS)):
        for i, (image, label) in enumerate(zip(pixels, labels)):
            folder = root / name / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    labels_file = root / "labels.txt"
    labels_file.write_text("\n".join(WORDS) + "\n")
    return root


@pytest.fixture(scope="session")
def foreign_models(mnist, digit_pngs, tmp_path_factory) -> dict[str, Foreign]:
    root = tmp_path_factory.mktemp("foreign_models")
    test_y = mnist.test_labels[:N_TEST]
    models = {}
    for spec in SPECS:
        model = train_mlp(own_input(mnist.train_images[:N_TRAIN], spec), mnist.train_labels[:N_TRAIN], spec.softmax)
        path = root / f"{spec.name}.onnx"
        (save_with_torch_export if spec.torch_export else save_with_onnx_helper)(model, spec, path)
        outputs = run_onnx(path, own_input(mnist.test_images[:N_TEST], spec))
        folder = digit_pngs / ("words" if spec.words else "digits32" if spec.size == 32 else "digits")
        models[spec.name] = Foreign(spec, path, spec.options(digit_pngs / "labels.txt"), folder,
                                    float((outputs.argmax(1) == test_y).mean()), outputs)
    return models


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[0]


# ------------------------------------------------------------------ predict through the CLI, accuracy kept

@pytest.mark.parametrize("name", [s.name for s in SPECS])
def test_predict_with_options_reaches_the_models_own_accuracy(foreign_models, name, tmp_path):
    m = foreign_models[name]
    assert m.own_accuracy > 0.8, f"the test model itself is not trained ({m.own_accuracy:.2%})"
    out = tmp_path / "rows.csv"
    result = invoke("predict", m.folder, "--model", m.path, *m.options, "--provider", "cpu", "-o", out)
    assert result.exit_code == EXIT_OK, result.output + result.stderr
    rows = read_rows(out)
    assert len(rows) == N_TEST and not any(r["blank"] == "true" for r in rows)
    accuracy = np.mean([r["label"] == r["expected"] for r in rows])
    assert abs(accuracy - m.own_accuracy) * 100 <= 0.1, (accuracy, m.own_accuracy)
    # The confidences are the model's own probabilities: its Softmax is not applied a second time.
    order = np.argsort([Path(r["path"]).name for r in rows])
    confidence = np.array([float(rows[i]["confidence"]) for i in order])
    own = m.own_outputs if m.spec.softmax else np.exp(m.own_outputs) / np.exp(m.own_outputs).sum(1, keepdims=True)
    np.testing.assert_allclose(confidence, own.max(1), atol=2e-6)


def test_labels_come_from_the_options_in_every_output(foreign_models, tmp_path):
    m = foreign_models["words"]
    out = tmp_path / "rows.jsonl"
    result = invoke("predict", m.folder / "seven", "--model", m.path, *m.options, "--provider", "cpu", "-o", out)
    assert result.exit_code == EXIT_OK, result.stderr
    import json

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["label"] for r in rows} <= set(WORDS) and "seven" in {r["label"] for r in rows}
    few = sorted((m.folder / "seven").iterdir())[:3]
    result = invoke("predict", *few, "--model", m.path, *m.options, "--provider", "cpu")
    assert result.exit_code == EXIT_OK and "seven" in result.output, result.output  # the terminal table


def test_a_32px_model_gets_28px_digits_scaled_the_mnist_way(foreign_models):
    """A 28x28 PNG is not in a 32x32 model's format: its ink box becomes 23 px, its centre of mass (16, 16)."""
    from toolkit.preprocess import to_model_pixels
    from toolkit.runtime import Predictor

    m = foreign_models["s32"]
    spec = Predictor.open(m.path, "cpu", flags=_flags(m)).contract.preprocess
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[4:24, 10:18] = 255  # a bar 20 tall, off-centre, in a 28x28 image
    pixels = to_model_pixels(digit, spec)
    rows, cols = np.nonzero(pixels > 25)
    assert pixels.shape == (32, 32)
    assert rows.max() - rows.min() + 1 in (22, 23, 24)
    mass = pixels.astype(float) / pixels.sum()
    centre = ((mass.sum(1) * np.arange(32)).sum(), (mass.sum(0) * np.arange(32)).sum())
    assert np.allclose(centre, (16, 16), atol=0.6), centre


def _flags(m: Foreign):
    from toolkit.flags import PreprocessFlags

    opts = dict(zip(m.options[::2], m.options[1::2]))
    return PreprocessFlags.parse(labels=opts["--labels"], mean=opts["--mean"], std=opts["--std"],
                                 scale=float(opts["--scale"]) if "--scale" in opts else None,
                                 polarity=opts.get("--polarity"))


def test_the_graph_facts_are_read_from_the_graph(foreign_models):
    from toolkit.runtime import Predictor

    for m in foreign_models.values():
        contract = Predictor.open(m.path, "cpu", flags=_flags(m)).contract
        spec = contract.preprocess
        assert (spec.layout, spec.channels, spec.height, spec.width) == (m.spec.layout, m.spec.channels,
                                                                         m.spec.size, m.spec.size)
        if m.spec.batch is None:
            assert isinstance(contract.input_shape[0], str)  # dynamic: the graph's symbolic name
        else:
            assert contract.input_shape[0] == m.spec.batch
        assert contract.output_kind == ("probabilities" if m.spec.softmax else "logits"), m.spec.name


# ------------------------------------------------------------------ stamp once, no options afterwards

def test_stamp_round_trip(foreign_models, tmp_path):
    m = foreign_models["nhwc_rgb"]
    before = hashlib.sha256(m.path.read_bytes()).hexdigest()
    stamped = tmp_path / "stamped.onnx"
    result = invoke("export", m.path, *m.options, "--out", stamped)
    assert result.exit_code == EXIT_OK, result.output + result.stderr
    assert "MNIST test digits" in result.output and f"wrote {stamped}" in result.output
    assert hashlib.sha256(m.path.read_bytes()).hexdigest() == before  # the original is only read

    out = tmp_path / "rows.csv"
    result = invoke("predict", m.folder, "--model", stamped, "--provider", "cpu", "-o", out)
    assert result.exit_code == EXIT_OK, result.stderr
    rows = read_rows(out)
    assert abs(np.mean([r["label"] == r["expected"] for r in rows]) - m.own_accuracy) * 100 <= 0.1

    info = invoke("inspect", stamped, "--json")
    import json

    meta = json.loads(info.output)["metadata"]
    assert meta["classes"] == DIGITS and meta["preprocess"]["layout"] == "NHWC"
    assert meta["preprocess"]["mean"] == list(m.spec.mean) and meta["output_kind"] == "logits"

    # The same options agree with the contract; a different one is refused, naming it.
    assert invoke("predict", m.folder / "3", "--model", stamped, *m.options, "--provider", "cpu").exit_code == 0
    result = invoke("predict", m.folder / "3", "--model", stamped, "--std", "0.5", "--provider", "cpu")
    assert result.exit_code == EXIT_USAGE
    line = one_error_line(result)
    assert str(stamped) in line and "--std 0.5 vs 0.229,0.224,0.225" in line

    # No clobber without --force; a stamped file needs no second stamp.
    result = invoke("export", m.path, *m.options, "--out", stamped)
    assert result.exit_code == EXIT_ERROR and "--force" in one_error_line(result)
    assert invoke("export", m.path, *m.options, "--out", stamped, "--force").exit_code == EXIT_OK
    result = invoke("export", stamped, *m.options, "--out", tmp_path / "twice.onnx")
    assert result.exit_code == EXIT_ERROR and "already carries" in one_error_line(result)
    assert not (tmp_path / "twice.onnx").exists()


def test_stamp_keeps_a_softmax_models_kind_and_word_labels(foreign_models, tmp_path):
    for name in ("softmax", "words", "fixed1"):
        m = foreign_models[name]
        stamped = tmp_path / f"{name}.onnx"
        result = invoke("export", m.path, *m.options, "--out", stamped)
        assert result.exit_code == EXIT_OK, result.stderr
        from toolkit.runtime import Predictor

        with_options = Predictor.open(m.path, "cpu", flags=_flags(m)).contract
        alone = Predictor.open(stamped, "cpu").contract
        assert (alone.classes, alone.preprocess, alone.output_kind, alone.input_shape) == \
            (with_options.classes, with_options.preprocess, with_options.output_kind, with_options.input_shape)


@pytest.mark.parametrize("case, code, words", [
    ("missing options", EXIT_USAGE, "needs --mean, --std, --out FILE"),
    ("wrong width", EXIT_USAGE, "10 outputs but --labels names 3"),
    ("nan outputs", EXIT_GATE, "NaN or infinite"),
    ("out is the input", EXIT_ERROR, "is the input model"),
])
def test_stamp_refusals_write_nothing(tmp_path, case, code, words):
    path = tmp_path / "model.onnx"
    tiny_graph(path, weight=np.full((784, 10), np.nan, np.float32) if case == "nan outputs" else None)
    before = path.read_bytes()
    out = path if case == "out is the input" else tmp_path / "stamped.onnx"
    args = {"missing options": ["--labels", ",".join(DIGITS)],
            "wrong width": ["--labels", "a,b,c", "--mean", "0.5", "--std", "0.5", "--out", out]}.get(
        case, ["--labels", ",".join(DIGITS), "--mean", "0.5", "--std", "0.5", "--out", out])
    result = invoke("export", path, *args)
    assert result.exit_code == code, result.output + result.stderr
    assert words in result.stderr, result.stderr
    assert path.read_bytes() == before and not (tmp_path / "stamped.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# ------------------------------------------------------------------ bench, inspect, draw on a described model

def test_bench_times_a_described_fixed_batch_model_at_its_size(foreign_models, tmp_path):
    import json

    m = foreign_models["fixed1"]
    out = tmp_path / "bench.json"
    result = invoke("bench", "--model", m.path, *m.options, "--provider", "cpu", "--engines", "onnx",
                    "--batch-sizes", "1,8", "--runs", "3", "--warmup", "1", "--no-peak", "--no-progress",
                    "--json", out)
    assert result.exit_code == EXIT_OK, result.output + result.stderr
    report = json.loads(out.read_text())
    assert report["model"]["input_shape"] == [1, 1, 28, 28]
    assert {r["batch"] for r in report["results"]} == {1}
    assert any(s["batch_sizes"] == [8] for s in report["skipped"])  # a fixed batch is timed at its size only
    assert "--labels" in report["command"]


def test_inspect_shows_the_contract_the_options_give(foreign_models):
    import json

    m = foreign_models["softmax"]
    result = invoke("inspect", m.path, "--json")
    assert result.exit_code == EXIT_OK
    assert "--labels" in json.loads(result.output)["contract"]
    result = invoke("inspect", m.path, *m.options, "--json")
    assert result.exit_code == EXIT_OK, result.stderr
    contract = json.loads(result.output)["contract"]
    assert contract["source"] == "options" and contract["output_kind"] == "probabilities"
    assert contract["classes"] == DIGITS and contract["input"] == "image" and contract["layout"] == "NCHW"


@pytest.mark.parametrize("name", ["s32", "nhwc_rgb"])
def test_draw_pad_on_a_described_model(foreign_models, mnist, display, name):
    """The pad feeds the model its own size, layout and channels; what it shows is the model's prediction."""
    from toolkit.draw import DrawApp, open_window
    from toolkit.runtime import Predictor

    m = foreign_models[name]
    predictor = Predictor.open(m.path, "cpu", threads=1, flags=_flags(m))
    root = open_window()
    pad = DrawApp(root, predictor)
    try:
        root.update()
        draw_by_handlers(pad, mnist.test_images[0])
        pad.predict()
        pixels = pad.model_pixels()
        assert pixels.shape == (m.spec.size, m.spec.size) and pixels.max() > 200
        probs = predictor.probabilities(pixels[None])[0]
        top = int(probs.argmax())
        assert pad.label.cget("text") == f"Prediction: {DIGITS[top]} ({probs[top]:.1%})"
        assert sum(w for w, _ in shown_bars(pad)) == pytest.approx(1.0, abs=1e-3)
    finally:
        pad.quit()


# ------------------------------------------------------------------ hostile graphs and options: one line each

def tiny_graph(path: Path, *, inputs=(("x", "float", ["n", 1, 28, 28]),), outputs: int = 10, weight=None,
               softmax: bool = False) -> None:
    """A linear classifier of the first input, in whatever input signature the case needs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    types = {"float": TensorProto.FLOAT, "uint8": TensorProto.UINT8, "double": TensorProto.DOUBLE}
    name, kind, shape = inputs[0]
    size = int(np.prod([d for d in shape[1:]]))
    w = np.random.default_rng(0).standard_normal((size, outputs)).astype(np.float32) * 0.05 if weight is None \
        else weight
    nodes = [helper.make_node("Cast", [name], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Flatten", ["f"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["z" if softmax else "y"])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["y"], axis=1))
    for extra, _, _ in inputs[1:]:  # a second input that the graph uses too
        nodes.append(helper.make_node("Identity", [extra], [f"{extra}_out"]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(n, types[k], s) for n, k, s in inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], outputs])] +
                              [helper.make_tensor_value_info(f"{n}_out", types[k], s) for n, k, s in inputs[1:]],
                              [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))


OPTIONS = ["--labels", ",".join(DIGITS), "--mean", "0.5", "--std", "0.5"]
BAD_GRAPHS = {
    "output width != labels": (dict(outputs=7), EXIT_USAGE, "the model has 7 outputs but --labels names 10 labels"),
    "2 inputs": (dict(inputs=(("x", "float", ["n", 1, 28, 28]), ("extra", "float", ["n", 4]))), EXIT_ERROR,
                 "the graph has 2 inputs (x, extra)"),
    "non-float input": (dict(inputs=(("x", "uint8", ["n", 1, 28, 28]),)), EXIT_ERROR,
                        "input 'x' is tensor(uint8); the toolkit feeds float32"),
    "5-D input": (dict(inputs=(("x", "float", ["n", 1, 1, 28, 28]),)), EXIT_ERROR, "has 5 dimensions"),
    "4 channels": (dict(inputs=(("x", "float", ["n", 4, 28, 28]),)), EXIT_ERROR, "4 channels (NCHW)"),
    "2 channels NHWC": (dict(inputs=(("x", "float", ["n", 28, 28, 2]),)), EXIT_ERROR, "2 channels (NHWC)"),
}


def _command(command: str, model: Path, *options) -> list:
    return {"predict": ["predict", model.parent / "digit.png", "--model", model],
            "bench": ["bench", "--model", model, "--runs", "1", "--no-peak", "--no-progress", "--engines", "onnx"],
            "inspect": ["inspect", model],
            "draw": ["draw", "--model", model]}[command] + [*options, *(["--provider", "cpu"] if command != "inspect"
                                                                      else [])]


@pytest.mark.parametrize("command", ["predict", "bench", "inspect", "draw"])
@pytest.mark.parametrize("case", list(BAD_GRAPHS))
def test_bad_graphs_get_one_line_and_an_exit_code(tmp_path, case, command, mnist):
    kwargs, code, words = BAD_GRAPHS[case]
    model = tmp_path / "model.onnx"
    tiny_graph(model, **kwargs)
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    result = invoke(*_command(command, model, *OPTIONS))
    assert result.exit_code == code, result.output + result.stderr
    line = one_error_line(result)
    assert line.startswith(f"toolkit: error: {model}: ") and words in line, line


@pytest.mark.parametrize("options, code, words", [
    ([], EXIT_ERROR, "has no toolkit metadata (classes, preprocessing); describe it with --labels ... --mean ... "
                     "--std ..."),
    (["--labels", "a,b,c,d,e,f,g,h,i,j"], EXIT_ERROR, "--mean ... --std ... (got --labels)"),
    (["--labels", ",".join(DIGITS), "--mean", "0.1,0.2,0.3", "--std", "0.5"], EXIT_USAGE,
     "--mean gives 3 values but the model's input has 1 channel(s)"),
    (["--labels", "nosuchfile.txt", "--mean", "0.5", "--std", "0.5"], EXIT_USAGE, "neither a labels file"),
    (["--labels", "1,1,2", "--mean", "0.5", "--std", "0.5"], EXIT_USAGE, "names 1 more than once"),
    (["--labels", ",".join(DIGITS), "--mean", "0.5,0.5", "--std", "0.5"], EXIT_USAGE, "give one value or three"),
    (["--labels", ",".join(DIGITS), "--mean", "0.5", "--std", "0"], EXIT_USAGE, "divides by zero"),
    (["--labels", ",".join(DIGITS), "--mean", "nan", "--std", "1"], EXIT_USAGE, "not a finite number"),
    (["--labels", ",".join(DIGITS), "--mean", "0.5", "--std", "1", "--scale", "0"], EXIT_USAGE, "--scale"),
])
def test_missing_and_bad_options_get_one_line(tmp_path, mnist, options, code, words):
    model = tmp_path / "model.onnx"
    tiny_graph(model)
    Image.fromarray(mnist.test_images[0]).save(tmp_path / "digit.png")
    for command in ("predict", "bench", "draw"):
        result = invoke(*_command(command, model, *options))
        assert result.exit_code == code, (command, result.output + result.stderr)
        text = result.stderr
        assert words in text and "Traceback" not in text, (command, text)
        if code == EXIT_ERROR:
            assert one_error_line(result).startswith(f"toolkit: error: {model}: ")
            assert "toolkit export MODEL.onnx" in text  # how to stamp it


def test_options_on_a_checkpoint_are_refused_by_inspect(tmp_path):
    import pickle

    checkpoint = tmp_path / "model.pth"  # a pickle is what inspect takes for a checkpoint; it is never loaded
    checkpoint.write_bytes(pickle.dumps({"state_dict": {}}, protocol=4))
    result = invoke("inspect", checkpoint, "--labels", "a,b")
    assert result.exit_code == EXIT_USAGE and "ONNX models only" in result.stderr


def test_a_final_softmax_is_detected_without_the_onnx_package(tmp_path):
    """The probe needs onnxruntime only: a Softmax graph is probabilities, the same graph without it logits."""
    import subprocess
    import sys

    for softmax in (True, False):
        tiny_graph(tmp_path / f"{softmax}.onnx", softmax=softmax)
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from toolkit.flags import PreprocessFlags\nfrom toolkit.runtime import Predictor\n"
            "flags = PreprocessFlags.parse(labels='0,1,2,3,4,5,6,7,8,9', mean='0.5', std='0.5')\n"
            f"for name in ('True', 'False'):\n"
            f"    print(Predictor.open({str(tmp_path)!r} + f'/{{name}}.onnx', 'cpu', flags=flags).contract.output_kind)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["probabilities", "logits"]
