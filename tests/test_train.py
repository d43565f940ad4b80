"""Training, checkpoints and the seed's own state_dict layout, on real MNIST."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from toolkit.errors import CheckpointError, OutputError
from toolkit.train.checkpoint import FORMAT, build_model, load_checkpoint
from toolkit.train.recipes import RECIPES
from toolkit.train.run import TrainJob, output_paths, train_to_files


def test_seed_recipe_is_the_notebooks():
    r = RECIPES["seed"]
    assert (r.optimizer, r.lr, r.batch_size, r.epochs, r.label_smoothing, r.max_shift) == ("adam", 0.01, 64, 15, 0.0, 0)


def test_tiny_training_learns(tiny_run):
    _, summary = tiny_run
    # chance is 10%; one epoch on 10k images reaches ~90%
    assert summary.test_accuracy > 0.80


def test_outputs_written(tiny_run):
    out, _ = tiny_run
    paths = output_paths(out)
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 0
    for key in ("samples", "confusion"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(paths["metrics"].read_text())
    cm = metrics["confusion_matrix"]
    assert sum(map(sum, cm)) == 10000
    assert abs(sum(cm[i][i] for i in range(10)) / 10000 - metrics["metrics"]["test_accuracy"]) < 1e-6


def test_checkpoint_round_trip_weights_only(tiny_run, mnist):
    out, summary = tiny_run
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == FORMAT
    for key in ("state_dict", "config", "preprocess", "classes", "recipe", "metrics", "versions"):
        assert key in raw
    ck = load_checkpoint(out)
    model = build_model(ck)
    assert not model.training
    from toolkit.preprocess import MNIST

    with torch.inference_mode():
        pred = model(torch.from_numpy(MNIST.normalize(mnist.test_images))).argmax(1).numpy()
    assert abs((pred == mnist.test_labels).mean() - summary.test_accuracy) < 1e-6


def test_seed_state_dict_loads_unchanged(tiny_run, tmp_path, seed_model_class):
    out, _ = tiny_run
    seed_model = seed_model_class()
    seed_model.load_state_dict(load_checkpoint(out).state_dict)  # strict: same keys, same shapes
    path = tmp_path / "seed_model.pth"
    torch.save(seed_model.state_dict(), path)  # exactly how the notebook saves
    ck = load_checkpoint(path)
    assert ck.kind == "state_dict"
    ours = build_model(ck)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(ours(x), seed_model.eval()(x))


@pytest.mark.slow
def test_same_seed_same_weights(tmp_path):
    job = TrainJob(epochs=1, train_subset=2000, seed=7, device="cpu", progress=False)
    a = train_to_files(job, out=tmp_path / "a.pth")
    b = train_to_files(job, out=tmp_path / "b.pth")
    sa, sb = load_checkpoint(tmp_path / "a.pth").state_dict, load_checkpoint(tmp_path / "b.pth").state_dict
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.test_accuracy == b.test_accuracy
    c = train_to_files(dataclasses.replace(job, seed=8), out=tmp_path / "c.pth")
    sc = load_checkpoint(tmp_path / "c.pth").state_dict
    assert not torch.equal(sa["model.1.weight"], sc["model.1.weight"])
    assert c.files


def test_existing_output_is_refused_before_training(tiny_ckpt):
    before = tiny_ckpt.read_bytes()
    with pytest.raises(OutputError, match="already exists; pass --force"):
        train_to_files(TrainJob(epochs=1, train_subset=200, progress=False), out=tiny_ckpt)
    assert tiny_ckpt.read_bytes() == before


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch, seed_model_class):
    """Ctrl-C during the checkpoint write: no partial file under any name."""
    import toolkit.train.checkpoint as C

    def interrupted_save(obj, f, *a, **k):
        f.write(b"partial")  # an in-memory buffer: the file is written from it afterwards (full disk -> OSError)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    model = seed_model_class()
    from toolkit.train.model import SimpleNN

    ours = SimpleNN()
    ours.load_state_dict(model.state_dict())
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(tmp_path / "model.pth", model=ours, record={"recipe": {}, "metrics": {}})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_out_in_a_new_folder_and_under_a_file(tmp_path):
    out, job = tmp_path / "runs" / "a" / "model.pth", TrainJob(epochs=1, train_subset=200, progress=False)
    train_to_files(job, out=out)
    assert out.is_file()
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot create the output directory"):
        train_to_files(job, out=tmp_path / "plain" / "model.pth")


def test_checkpoint_from_other_architecture_is_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), path)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(path)
