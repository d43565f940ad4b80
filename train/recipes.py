"""Named training recipes: how to optimise. Any recipe trains any architecture (--arch); each has a default."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Recipe:
    name: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # "adam" | "adamw"
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" | "onecycle"
    label_smoothing: float = 0.0
    max_shift: int = 0  # random translation of training images, in pixels
    description: str = ""

    def with_overrides(self, **kw) -> "Recipe":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


RECIPES = {
    # Exactly the seed notebook: Adam 0.01, batch 64, 15 epochs, plain cross-entropy.
    "seed": Recipe(
        name="seed", epochs=15, batch_size=64, lr=0.01, optimizer="adam",
        description="the seed notebook's recipe: Adam lr 0.01, batch 64, 15 epochs, cross-entropy",
    ),
    # Same network; a one-cycle schedule lets a high peak rate settle, smoothing and
    # small shifts regularise against the exact pixel positions of MNIST's centring.
    "onecycle": Recipe(
        name="onecycle", epochs=30, batch_size=128, lr=0.01, optimizer="adamw", weight_decay=1e-4,
        schedule="onecycle", label_smoothing=0.1, max_shift=2,
        description="AdamW + one-cycle LR (peak 0.01), label smoothing 0.1, random ±2 px shifts, batch 128, 30 epochs",
    ),
    # The CNN's default: the onecycle recipe's ingredients, fewer epochs (a conv epoch costs ~4x an MLP epoch
    # here) at batch 256, where per-step overhead is amortised better on two cores.
    "cnn": Recipe(
        name="cnn", epochs=7, batch_size=256, lr=0.005, optimizer="adamw", weight_decay=1e-4,
        schedule="onecycle", label_smoothing=0.1, max_shift=2,
        description="AdamW + one-cycle LR (peak 0.005), label smoothing 0.1, random ±2 px shifts, batch 256, 7 epochs",
    ),
}
