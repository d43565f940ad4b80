"""The training loop: preloaded tensors, tqdm bars, test accuracy after every epoch.

MNIST fits in memory many times over, so batches are sliced from one
pre-normalised tensor instead of going through a DataLoader: on a 2-core machine
the per-batch Python overhead of a DataLoader costs more than the model itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from toolkit.errors import TrainingDiverged
from toolkit.preprocess import MNIST, PreprocessSpec

from .recipes import Recipe

if TYPE_CHECKING:
    from .data import Mnist
    from .run import TrainJob


@dataclass
class TrainResult:
    model: object
    history: list[dict] = field(default_factory=list)
    test_predictions: np.ndarray | None = None
    seconds: float = 0.0


def resolve_device(device: str) -> str:
    import torch

    from toolkit.errors import ProviderUnavailable

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ProviderUnavailable("--device cuda: torch reports no usable CUDA device on this machine")
    return device


def _shift(x, max_shift: int, gen):
    """Random integer translation per image, zero-filled (background is -1 after normalisation)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=float(x.min()))
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]
    return pad[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def _diverged(what: str, epoch: int, step: int, recipe: Recipe) -> TrainingDiverged:
    return TrainingDiverged(f"training diverged: {what} at epoch {epoch}, step {step} (learning rate {recipe.lr:g}); "
                            "stopped, nothing was written; try a smaller --lr")


def evaluate(model, x, y, batch_size: int = 2000):
    import torch

    model.eval()
    preds = []
    loss = 0.0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            out = model(x[i:i + batch_size])
            loss += float(torch.nn.functional.cross_entropy(out, y[i:i + batch_size], reduction="sum"))
            preds.append(out.argmax(1))
    pred = torch.cat(preds)
    return float((pred == y).float().mean()), loss / len(x), pred.cpu().numpy()


def train(recipe: Recipe, data: Mnist, job: TrainJob, *, spec: PreprocessSpec = MNIST, config=None) -> TrainResult:
    """Train the network ``config`` describes (any train.architectures config; default the seed's MLP) on
    ``data``'s training set, tested on its test set; from ``job`` its seed, device ("cpu" or "cuda") and progress."""
    import torch
    from tqdm.auto import tqdm

    from .architectures import build
    from .model import MLPConfig

    torch.manual_seed(job.seed)
    gen = torch.Generator().manual_seed(job.seed)
    dev = torch.device(job.device)
    x = torch.from_numpy(spec.normalize(data.train_images)).to(dev)
    y = torch.from_numpy(data.train_labels).to(dev)
    tx = torch.from_numpy(spec.normalize(data.test_images)).to(dev)
    ty = torch.from_numpy(data.test_labels).to(dev)

    model = build(config if config is not None else MLPConfig()).to(dev)
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[recipe.optimizer]
    opt = optimizer(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = (len(x) + recipe.batch_size - 1) // recipe.batch_size
    sched = None
    if recipe.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, epochs=recipe.epochs,
                                                    steps_per_epoch=steps_per_epoch)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    result = TrainResult(model=model)
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        order = torch.randperm(len(x), generator=gen).to(dev)
        total = 0.0
        # closed on the way out too, so a divergence error is not printed into a half-drawn bar
        with tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{recipe.epochs}", leave=False,
                  disable=not job.progress, dynamic_ncols=True, mininterval=0.5) as bar:
            for step in bar:
                idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
                xb = x[idx]
                if recipe.max_shift:
                    xb = _shift(xb, recipe.max_shift, gen)
                loss = criterion(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                try:
                    opt.step()
                except RuntimeError as e:  # a rate near float32's limit: Adam's step size itself overflows
                    if "overflow" not in str(e):
                        raise
                    raise _diverged("the optimizer's step overflowed float32", epoch, step + 1, recipe) from None
                if sched is not None:
                    sched.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise _diverged(f"the training loss became {value}", epoch, step + 1, recipe)
                total += value
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{total / (step + 1):.4f}")
        acc, test_loss, preds = evaluate(model, tx, ty)
        # The last step can push weights to Inf with a finite loss, and BatchNorm can hide them from the loss.
        bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad or not math.isfinite(test_loss):
            what = f"tensor {bad[0]} became NaN/Inf" if bad else f"the test loss became {test_loss}"
            raise _diverged(what, epoch, steps_per_epoch, recipe)
        row = {"epoch": epoch, "train_loss": total / steps_per_epoch, "test_loss": test_loss,
               "test_accuracy": acc, "seconds": time.perf_counter() - start}
        result.history.append(row)
        if job.progress:
            tqdm.write(f"epoch {epoch:>2}/{recipe.epochs}  loss {row['train_loss']:.4f}  "
                       f"test acc {acc * 100:.2f}%  ({row['seconds']:.0f} s)")
        result.test_predictions = preds
    result.seconds = time.perf_counter() - start
    model.eval()
    return result
