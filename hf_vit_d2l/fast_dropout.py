"""A faster dropout for CPU training, swapped into a model by the training code (`--fast_dropout`).

On a CPU, `bernoulli_` draws one random number per element on one thread. The dropped positions of i.i.d.
Bernoulli(p) dropout are the running sums of Geometric(p) gaps, so drawing p * n gaps instead of n coin flips gives
the same distribution of masks from another random stream. The shipped model file keeps the book's `nn.Dropout`:
the swap changes modules of a model in memory, never the code saved next to the weights.
"""

import torch
from torch import nn


def fast_dropout(hidden_states: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """`nn.functional.dropout`'s i.i.d. Bernoulli(p) drops, drawn as running sums of geometric gaps on a CPU.

    Plain dropout on other devices, for p > 0.5 and under `torch.compile`. Never in place.
    """
    n = hidden_states.numel()
    if not training or hidden_states.device.type != "cpu" or not 0 < p <= 0.5 or torch.compiler.is_compiling():
        return nn.functional.dropout(hidden_states, p, training)
    # p * n gaps on average; the margin of 8 * sqrt(n) + 16 is more than 16 standard deviations.
    gaps = torch.empty(int(n * p + 8 * n**0.5 + 16), dtype=torch.long)
    dropped = gaps.geometric_(p).cumsum(0) - 1
    while dropped[-1] < n:  # the draws fell short of the end: draw on
        dropped = torch.cat((dropped, dropped[-1] + gaps.geometric_(p).cumsum(0)))
    # Positions past the end all land in one spare slot, n, which is cut off.
    mask = hidden_states.new_full((n + 1,), 1 / (1 - p))
    mask.index_fill_(0, dropped.clamp_(max=n), 0)
    return hidden_states * mask[:n].view_as(hidden_states)


class FastDropout(nn.Dropout):
    """`nn.Dropout` through `fast_dropout`."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return fast_dropout(hidden_states, self.p, self.training)


def replace_dropout_modules(model: nn.Module) -> int:
    """Swap every `nn.Dropout` submodule of `model` for a `FastDropout` of the same rate; returns how many.

    Attention dropout inside sdpa is not a module and stays as it is.
    """
    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is nn.Dropout:
                setattr(module, name, FastDropout(child.p).train(child.training))
                swapped += 1
    return swapped
