"""FLOPs per image for the contract (bench's roofline reads them); below train/architectures.py, which imports the
configs that count with it."""

from __future__ import annotations


def count_flops(model, input_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one image through ``model`` in eval mode, as torch's FlopCounterMode counts them.

    That counter counts matrix multiplies and convolutions (2 per multiply-add) and nothing else:
    BatchNorm folds into them at inference, activations and pooling are memory-bound.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
