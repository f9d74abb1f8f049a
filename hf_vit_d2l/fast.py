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


# ------------------------------------------------------------------------------ GPU-resident book recipe (GPU path)
def gpu_resident_book_run(
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.1,
    bf16: bool = True,
    compile_model: bool = True,
    device: str = "cuda",
    data_dir: str | None = None,
    seed: int = 0,
    max_train_samples: int | None = None,
) -> dict:
    """The book's recipe (SGD lr 0.1, batch 128, 10 epochs, eval on the test split after every epoch) with the data
    kept on the device: all 70,000 images live there as uint8 (55 MB), each batch is gathered, converted and resized
    to the model's size there (bilinear, no antialias: upsampling), the loss is accumulated on the device and read
    once per epoch, so there is no host<->device copy or sync per step. bf16 autocast and torch.compile are optional.

    This is a measuring tool for the GPU target (< 60 s for the whole recipe incl. eval on one H100); the Trainer
    path (`scripts/train.py`) is the supported way to train. Returns per-epoch loss/accuracy and timings.
    """
    import time

    from .configuration_vit_d2l import ViTD2LConfig  # noqa: F401 (documentation: the config the preset builds)
    from .data import DEFAULT_DATA_DIR, find_fashion_mnist_files, read_idx
    from .modeling_vit_d2l import ViTD2LForImageClassification
    from .presets import get_preset

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("gpu_resident_book_run needs CUDA (torch.cuda.is_available() is False); use device='cpu'.")
    files = find_fashion_mnist_files(data_dir or DEFAULT_DATA_DIR)
    if files is None:
        raise RuntimeError(f"Fashion-MNIST IDX files not found in {data_dir or DEFAULT_DATA_DIR}.")
    arrays = {split: (read_idx(images), read_idx(labels)) for split, (images, labels) in files.items()}
    torch.manual_seed(seed)
    start_all = time.perf_counter()
    x_train = torch.from_numpy(arrays["train"][0].copy()).to(device)  # (60000, 28, 28) uint8
    y_train = torch.from_numpy(arrays["train"][1].astype("int64")).to(device)
    x_test = torch.from_numpy(arrays["test"][0].copy()).to(device)
    y_test = torch.from_numpy(arrays["test"][1].astype("int64")).to(device)
    if max_train_samples:
        x_train, y_train = x_train[:max_train_samples], y_train[:max_train_samples]
    config = get_preset("vit_d2l_fashion_mnist")
    size = config.image_size
    model = ViTD2LForImageClassification._from_config(config, attn_implementation="sdpa").to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def prepare(images: torch.Tensor) -> torch.Tensor:  # uint8 (B, 28, 28) -> float (B, 1, size, size) in [0, 1]
        x = images.unsqueeze(1).float().div_(255.0)
        return nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    def train_step(images, labels):
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(pixel_values=prepare(images)).logits
        loss = nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def eval_logits(images):
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            return model(pixel_values=prepare(images)).logits.float()

    if compile_model:
        train_step = torch.compile(train_step)
        eval_logits = torch.compile(eval_logits)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    sync()
    setup_seconds = time.perf_counter() - start_all
    epochs_out = []
    n = x_train.shape[0]
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, device=device)
        total = torch.zeros((), device=device)
        steps = 0
        for i in range(0, n - batch_size + 1, batch_size):  # full batches: one compiled shape
            idx = order[i : i + batch_size]
            total += train_step(x_train[idx], y_train[idx])
            steps += 1
        sync()
        t1 = time.perf_counter()
        model.eval()
        correct = torch.zeros((), device=device, dtype=torch.int64)
        eval_total = torch.zeros((), device=device)
        eval_batch = 1000
        for i in range(0, x_test.shape[0], eval_batch):
            logits = eval_logits(x_test[i : i + eval_batch])
            eval_total += nn.functional.cross_entropy(logits, y_test[i : i + eval_batch], reduction="sum")
            correct += (logits.argmax(-1) == y_test[i : i + eval_batch]).sum()
        sync()
        t2 = time.perf_counter()
        epochs_out.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(total) / max(steps, 1),
                "eval_loss": float(eval_total) / x_test.shape[0],
                "eval_accuracy": float(correct) / x_test.shape[0],
                "train_seconds": t1 - t0,
                "eval_seconds": t2 - t1,
                "train_img_per_s": steps * batch_size / (t1 - t0),
            }
        )
    total_seconds = time.perf_counter() - start_all
    return {
        "epochs": epochs_out,
        "total_seconds_incl_setup_and_compile": total_seconds,
        "setup_seconds": setup_seconds,
        "final_eval_accuracy": epochs_out[-1]["eval_accuracy"] if epochs_out else None,
        "bf16": bf16,
        "torch_compile": compile_model,
        "batch_size": batch_size,
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m hf_vit_d2l.fast gpu-run [--epochs N] [--no-bf16] [--no-compile] [--device cuda] [--json PATH]`."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m hf_vit_d2l.fast", description=main.__doc__)
    parser.add_argument("command", choices=["gpu-run"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--no-compile", dest="compile_model", action="store_false")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        result = gpu_resident_book_run(
            epochs=args.epochs,
            batch_size=args.batch_size,
            bf16=args.bf16,
            compile_model=args.compile_model,
            device=args.device,
            data_dir=args.data_dir,
            max_train_samples=args.max_train_samples,
        )
    except RuntimeError as error:
        print(f"error: {error}")
        return 2
    for row in result["epochs"]:
        print(json.dumps(row))
    print(
        f"total {result['total_seconds_incl_setup_and_compile']:.1f} s (incl. setup/compile), final accuracy "
        f"{result['final_eval_accuracy']}"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
