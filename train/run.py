"""`toolkit train` as a library call: data -> training -> checkpoint, metrics and figures."""

from __future__ import annotations

from dataclasses import asdict, dataclass
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


def train_to_files(*, out, arch="mlp", recipe_name=None, epochs=None, batch_size=None, lr=None, seed=0,
                   device="auto", data_dir=None, train_subset=None, progress=True, force=False) -> TrainSummary:
    import torch  # noqa: F401  (an install without the train extra fails here, before touching any file)

    paths = output_paths(out)
    folder = paths["checkpoint"].parent
    with removed_on_failure(folder, prepare_folder(folder)):
        for p in paths.values():  # refuse before spending minutes on training
            check_writable(p, force=force)
        return _train_into(paths, arch, recipe_name, epochs, batch_size, lr, seed, device, data_dir, train_subset,
                           progress, force)


def _train_into(paths, arch, recipe_name, epochs, batch_size, lr, seed, device, data_dir, train_subset,
                progress, force) -> TrainSummary:
    import torch

    from .architectures import ARCHITECTURES
    from .trainer import resolve_device, train

    architecture = ARCHITECTURES[arch]
    config = architecture.config()
    recipe = RECIPES[recipe_name or architecture.default_recipe].with_overrides(epochs=epochs, batch_size=batch_size,
                                                                                lr=lr)
    device = resolve_device(device)
    data = load_mnist(data_dir, quiet=not progress)
    images, labels = data.train_images, data.train_labels
    if train_subset:
        images, labels = images[:train_subset], labels[:train_subset]

    result = train(recipe, images, labels, data.test_images, data.test_labels, seed=seed, device=device,
                   progress=progress, config=config)
    final = result.history[-1]
    cm = figures.confusion_matrix(data.test_labels, result.test_predictions, len(DEFAULT_CLASSES))
    per_class = (cm.diagonal() / cm.sum(axis=1)).tolist()
    metrics = {
        "arch": arch,
        "test_accuracy": final["test_accuracy"],
        "test_loss": final["test_loss"],
        "train_loss": final["train_loss"],
        "test_images": int(len(data.test_labels)),
        "train_images": int(len(labels)),
        "per_class_accuracy": per_class,
        "train_seconds": result.seconds,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "history": result.history,
    }
    recipe_dict = asdict(recipe)
    save_checkpoint(paths["checkpoint"], model=result.model, recipe=recipe_dict, metrics=metrics, replace=force)
    write_json(paths["metrics"], {"recipe": recipe_dict, "metrics": metrics, "confusion_matrix": cm.tolist()},
               replace=force)
    with atomic_path(paths["samples"], replace=force) as tmp:
        figures.sample_grid(tmp, data.train_images[:16], data.train_labels[:16], DEFAULT_CLASSES)
    with atomic_path(paths["confusion"], replace=force) as tmp:
        figures.confusion_png(tmp, cm, DEFAULT_CLASSES,
                              title=f"Confusion matrix (test accuracy {final['test_accuracy'] * 100:.2f}%)")
    return TrainSummary(arch=arch, recipe=recipe.name, test_accuracy=final["test_accuracy"], epochs=recipe.epochs,
                        train_seconds=result.seconds,
                        device=device, files=[str(p) for p in paths.values()])
