"""Regenerate samples/: the first N images of each digit in the MNIST test set, as PNG.

    python samples/make_samples.py [--per-class 10]

Files are named after their index in the official test set (t10k-00018.png is
test image 18), so every sample can be traced back to its source.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from toolkit.train.data import load_mnist

    data = load_mnist()
    for digit in range(10):
        folder = args.out / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(data.test_labels == digit)[: args.per_class]:
            Image.fromarray(data.test_images[index], mode="L").save(folder / f"t10k-{index:05d}.png", optimize=True)
    print(f"wrote {10 * args.per_class} PNGs under {args.out}")


if __name__ == "__main__":
    main()
