"""`toolkit train` as a library call: data -> training -> checkpoint, metrics and figures."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from toolkit.atomic import atomic_path, check_writable, prepare_folder, removed_on_failure, write_json

from . import figures
from .checkpoint import DEFAULT_CLASSES, save_checkpoint
from .data import load_mnist
from .recipes import RECIPES


@dataclass
class TrainSummary:
    arch: str
    recipe: str
    test_accuracy: float
    epochs: int
    train_seconds: float
    device: str
    files: list[str]


def output_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {"checkpoint": out, "metrics": out.with_suffix(".metrics.json"),
            "samples": out.with_suffix(".samples.png"), "confusion": out.with_suffix(".confusion.png")}


@dataclass(frozen=True)
class TrainJob:
    """What `toolkit train` is asked for, beside where the files go; None takes the recipe's own value."""

    arch: str = "mlp"
    recipe: str | None = None  # default: the architecture's own recipe
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"  # resolved to "cpu" or "cuda" before training
    data_dir: str | os.PathLike | None = None
    train_subset: int | None = None  # train on the first N training images only
    progress: bool = True


def train_to_files(job: TrainJob, *, out, force: bool = False) -> TrainSummary:
    import torch  # noqa: F401  (an install without the train extra fails here, before touching any file)

    paths = output_paths(out)
    folder = paths["checkpoint"].parent
    with removed_on_failure(folder, prepare_folder(folder)):
        for p in paths.values():  # refuse before spending minutes on training
            check_writable(p, force=force)
        return _train_into(paths, job, force)


def _train_into(paths, job: TrainJob, force: bool) -> TrainSummary:
    import torch

    from .architectures import ARCHITECTURES
    from .trainer import resolve_device, train

    architecture = ARCHITECTURES[job.arch]
    config = architecture.config()
    recipe = RECIPES[job.recipe or architecture.default_recipe].with_overrides(epochs=job.epochs,
                                                                               batch_size=job.batch_size, lr=job.lr)
    job = replace(job, device=resolve_device(job.device))
    data = load_mnist(job.data_dir, quiet=not job.progress)
    trained_on = data
    if job.train_subset:
        trained_on = replace(data, train_images=data.train_images[:job.train_subset],
                             train_labels=data.train_labels[:job.train_subset])

    result = train(recipe, trained_on, job, config=config)
    final = result.history[-1]
    cm = figures.confusion_matrix(data.test_labels, result.test_predictions, len(DEFAULT_CLASSES))
    per_class = (cm.diagonal() / cm.sum(axis=1)).tolist()
    metrics = {
        "arch": job.arch,
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "train_loss": final["train_loss"],
        "test_images": int(len(data.test_labels)),
        "train_images": int(len(trained_on.train_labels)),
        "per_class_accuracy": per_class,
        "train_seconds": result.seconds,
        "device": job.device,
        "torch_threads": torch.get_num_threads(),
        "seed": job.seed,
        "history": result.history,
    }
    record = {"recipe": asdict(recipe), "metrics": metrics}
    save_checkpoint(paths["checkpoint"], model=result.model, record=record, replace=force)
    write_json(paths["metrics"], {**record, "confusion_matrix": cm.tolist()}, replace=force)
    with atomic_path(paths["samples"], replace=force) as tmp:
        figures.sample_grid(tmp, data.train_images[:16], data.train_labels[:16], DEFAULT_CLASSES)
    with atomic_path(paths["confusion"], replace=force) as tmp:
        figures.confusion_png(tmp, cm, DEFAULT_CLASSES,
                              title=f"Confusion matrix (test accuracy {final['test_accuracy'] * 100:.2f}%)")
    return TrainSummary(arch=job.arch, recipe=recipe.name, test_accuracy=final["test_accuracy"],
                        epochs=recipe.epochs, train_seconds=result.seconds, device=job.device,
                        files=[str(p) for p in paths.values()])
