"""Fast training paths for `ViTD2LForImageClassification`: cheap dropout masks, a matmul patch embedding, bf16.

Why these exist (measured with `torch.profiler` on the 2-core AVX-512/AMX CPU, book config, batch 128; see the
README's "Performance" section for the numbers):

- **Dropout masks dominate after the matmuls.** `nn.Dropout` draws its mask with `bernoulli_`, about 10-25 ns per
  element on this CPU; the book's config drops about 29 M activations per step, so mask generation costs as much
  as a third of a bf16 step. `FastDropout` draws 16 random bits per element with one `randint` call over int64
  words (about 1 ns per element) and compares them with a threshold: the drop probability is `p` rounded to a
  multiple of 1/65536 (0.1 -> 0.100006), the scaling is the usual 1 / (1 - p).
- **The patch convolution's backward is slow in bf16** (oneDNN picks a poor kernel for a 1-channel 16x16/16
  convolution). Kernel = stride means the convolution is a reshape plus one matmul; `fast_patch_embedding` runs it
  that way on the same `projection.weight` (weight keys unchanged, eval logits equal within float rounding).
- **bf16 autocast casts every weight on every forward**, and the casts cost about as much as the bf16 matmuls
  save. Keeping the parameters in bf16 and the fp32 "master" copy inside the optimizer
  (`Bf16MasterWeightOptimizer`) removes those casts; the update is applied in fp32, so small updates are not lost
  to bf16 rounding.

Everything here is opt-in and changes no weight key: `apply_fast_path(model)` swaps dropout modules and the patch
embedding's forward in place, `to_bf16_with_master_weights(model, optimizer_cls, ...)` returns the bf16 model's
optimizer, and `restore_fp32(model, optimizer)` puts the fp32 master weights back before saving.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .modeling_vit_d2l import ViTD2LAttention, ViTD2LPatchEmbeddings

__all__ = [
    "FAST_ATTENTION_NAME",
    "Bf16MasterWeightOptimizer",
    "FastDropout",
    "apply_fast_path",
    "fast_dropout",
    "fast_patch_embedding",
    "restore_fp32",
    "to_bf16_with_master_weights",
]

FAST_ATTENTION_NAME = "vit_d2l_fast"


# ---------------------------------------------------------------------------------------------------- dropout
def _keep_mask(shape: torch.Size, p: float, device: torch.device, generator: torch.Generator | None = None):
    """A bool mask, True with probability 1 - p (p rounded to a multiple of 1/65536), from 16 random bits each."""
    numel = math.prod(shape)
    words = torch.randint(
        -(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64, device=device, generator=generator
    )
    bits = words.view(torch.int16)[:numel].view(shape)  # uniform over [-32768, 32767]
    threshold = -32768 + round(p * 65536)
    return bits >= threshold


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`nn.functional.dropout` with a cheaper mask (see module docstring); identity when not training or p == 0."""
    if not training or p == 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep = _keep_mask(x.shape, p, x.device)
    return torch.where(keep, x, 0.0) * (1.0 / (1.0 - p))


class FastDropout(nn.Module):
    """Drop-in for `nn.Dropout` (same `p`, same train/eval behaviour) using `fast_dropout`'s mask."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _fast_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's eager attention (softmax(QK^T / sqrt(d)) V) with `fast_dropout` on the weights.

    query/key/value: (B, heads, T, head_dim); returns (B, T, heads, head_dim) and the weights.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, heads, T, T)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1)
    output = torch.matmul(fast_dropout(weights, dropout, module.training), value)
    return output.transpose(1, 2).contiguous(), weights


def _register_fast_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(FAST_ATTENTION_NAME, _fast_attention_forward)


# ---------------------------------------------------------------------------------------------- patch embedding
def _patch_embedding_as_matmul(self: ViTD2LPatchEmbeddings, pixel_values: torch.Tensor) -> torch.Tensor:
    """`ViTD2LPatchEmbeddings.forward` as reshape + matmul (kernel = stride: no overlap); same weights and math."""
    if pixel_values.dim() != 4 or pixel_values.shape[1:] != (self.num_channels, self.image_size, self.image_size):
        return self._conv_forward(pixel_values)  # the original forward raises the clear error
    weight = self.projection.weight  # (hidden, C, p, p)
    hidden, channels, patch, _ = weight.shape
    batch, grid = pixel_values.shape[0], self.image_size // patch
    x = pixel_values[..., : grid * patch, : grid * patch].to(weight.dtype)
    # (B, C, g, p, g, p) -> (B, g, g, C, p, p) -> (B, g*g, C*p*p): the conv's receptive fields, row-major
    x = x.reshape(batch, channels, grid, patch, grid, patch).permute(0, 2, 4, 1, 3, 5)
    x = x.reshape(batch, grid * grid, channels * patch * patch)
    return nn.functional.linear(x, weight.reshape(hidden, -1), self.projection.bias)


def fast_patch_embedding(model: nn.Module) -> int:
    """Run every `ViTD2LPatchEmbeddings` in `model` as reshape + matmul. Returns how many were switched."""
    count = 0
    for module in model.modules():
        if isinstance(module, ViTD2LPatchEmbeddings) and not hasattr(module, "_conv_forward"):
            module._conv_forward = module.forward
            module.forward = types.MethodType(_patch_embedding_as_matmul, module)
            count += 1
    return count


def apply_fast_path(model: nn.Module, dropout: bool = True, patch_matmul: bool = True) -> nn.Module:
    """Switch `model` (in place) to the fast CPU training path; weight keys and eval outputs stay the same.

    - `dropout`: every `nn.Dropout` becomes `FastDropout`, and attention uses the eager formula with `fast_dropout`
      (registered with transformers' `AttentionInterface` as "vit_d2l_fast"; attention weights are still returned
      when asked for).
    - `patch_matmul`: the patch convolution runs as reshape + matmul (`fast_patch_embedding`).
    """
    if dropout:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout:
                    replacement = FastDropout(child.p)
                    replacement.train(child.training)  # keep the model's current train/eval mode
                    setattr(parent, name, replacement)
        if any(isinstance(m, ViTD2LAttention) for m in model.modules()):
            _register_fast_attention()
            config = getattr(model, "config", None)
            if config is not None:
                config._attn_implementation = FAST_ATTENTION_NAME
            for module in model.modules():
                if isinstance(module, ViTD2LAttention):
                    module.config._attn_implementation = FAST_ATTENTION_NAME
    if patch_matmul:
        fast_patch_embedding(model)
    return model


# ------------------------------------------------------------------------------------- bf16 with fp32 master copy
class Bf16MasterWeightOptimizer(torch.optim.Optimizer):
    """Train bf16 parameters with an fp32 optimizer: grads are copied up, the step runs in fp32, weights copied down.

    `params` are the model's (bf16) parameters. The wrapped optimizer is built by `optimizer_factory(masters)`
    over fp32 copies, so momentum/Adam state and the weights' low bits live in fp32. `param_groups` are the inner
    optimizer's, so learning-rate schedulers (and transformers' Trainer) drive it like any optimizer.
    `state_dict()` includes the fp32 masters, so resuming from a checkpoint is exact.
    """

    def __init__(self, params: Iterable[nn.Parameter], optimizer_factory: Callable[[list], torch.optim.Optimizer]):
        self.model_params = [p for p in params if p.requires_grad]
        if not self.model_params:
            raise ValueError("Bf16MasterWeightOptimizer got no trainable parameters.")
        self.master_params = [p.detach().clone().float().requires_grad_(True) for p in self.model_params]
        self.inner = optimizer_factory(self.master_params)
        if not isinstance(self.inner, torch.optim.Optimizer):
            raise TypeError(f"optimizer_factory must return a torch.optim.Optimizer, got {type(self.inner).__name__}")
        # Deliberately no super().__init__: state and groups are the inner optimizer's.
        self.defaults = self.inner.defaults
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}
        self._optimizer_state_dict_pre_hooks = {}
        self._optimizer_state_dict_post_hooks = {}
        self._optimizer_load_state_dict_pre_hooks = {}
        self._optimizer_load_state_dict_post_hooks = {}

    @property
    def param_groups(self):
        return self.inner.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.inner.param_groups = value

    @property
    def state(self):
        return self.inner.state

    @state.setter
    def state(self, value):
        self.inner.state = value

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("Bf16MasterWeightOptimizer does not support closures.")
        for model_param, master in zip(self.model_params, self.master_params):
            master.grad = None if model_param.grad is None else model_param.grad.float()
        self.inner.step()
        for model_param, master in zip(self.model_params, self.master_params):
            model_param.copy_(master)

    def zero_grad(self, set_to_none: bool = True):
        for param in self.model_params:
            if param.grad is not None:
                if set_to_none:
                    param.grad = None
                else:
                    param.grad.zero_()
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "master_params": [m.detach().clone() for m in self.master_params]}

    def load_state_dict(self, state_dict):
        if "inner" not in state_dict or "master_params" not in state_dict:
            raise ValueError("Not a Bf16MasterWeightOptimizer state_dict (needs 'inner' and 'master_params').")
        masters = state_dict["master_params"]
        if len(masters) != len(self.master_params):
            raise ValueError(
                f"state_dict has {len(masters)} master weights, this optimizer {len(self.master_params)}."
            )
        with torch.no_grad():
            for master, saved, model_param in zip(self.master_params, masters, self.model_params):
                master.copy_(saved)
                model_param.copy_(saved)
        self.inner.load_state_dict(state_dict["inner"])

    def __repr__(self) -> str:
        return f"Bf16MasterWeightOptimizer({self.inner!r})"


def to_bf16_with_master_weights(
    model: nn.Module, optimizer_factory: Callable[[list], torch.optim.Optimizer]
) -> Bf16MasterWeightOptimizer:
    """Cast `model` to bf16 in place and return an optimizer that keeps fp32 masters of its parameters.

    Masters are copied from the fp32 weights *before* the cast, so no precision is lost at the start.
    Example: `opt = to_bf16_with_master_weights(model, lambda ps: torch.optim.SGD(ps, lr=0.1))`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    masters = [p.detach().clone().float() for p in params]
    model.to(torch.bfloat16)
    optimizer = Bf16MasterWeightOptimizer([p for p in model.parameters() if p.requires_grad], optimizer_factory)
    with torch.no_grad():
        for master, saved in zip(optimizer.master_params, masters):
            master.copy_(saved)
    return optimizer


def restore_fp32(model: nn.Module, optimizer: Bf16MasterWeightOptimizer) -> nn.Module:
    """Cast `model` back to fp32 and load the optimizer's fp32 masters into it (do this before `save_pretrained`)."""
    if not isinstance(optimizer, Bf16MasterWeightOptimizer):
        raise TypeError(f"restore_fp32 needs a Bf16MasterWeightOptimizer, got {type(optimizer).__name__}.")
    model.to(torch.float32)
    with torch.no_grad():
        for model_param, master in zip(optimizer.model_params, optimizer.master_params):
            model_param.copy_(master)
    optimizer.model_params = [p for p in model.parameters() if p.requires_grad]
    return model
