"""An exponential moving average of the weights during training, as a `TrainerCallback` (`--ema_decay`).

The Trainer trains the raw weights; this callback keeps their average, evaluates with it during training, and
leaves it in the model when training ends, so that the saved model is the averaged one. Each checkpoint holds the
raw weights (the Trainer's) and the average (`ema.safetensors`), so a resumed run continues both.
"""

import os

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

EMA_FILE = "ema.safetensors"


class EMACallback(TrainerCallback):
    """`average = decay * average + (1 - decay) * weights` after every optimizer step.

    The decay ramps up as `min(decay, (1 + step) / (10 + step))`, so the first steps' weights do not linger.
    Floating-point buffers (none in this model) are averaged like weights.
    """

    def __init__(self, decay: float, resume_from: str | None = None):
        self.decay = decay
        self.resume_from = resume_from
        self.average: dict[str, torch.Tensor] = {}
        self.raw: dict[str, torch.Tensor] | None = None  # the raw weights while the average is in the model

    @staticmethod
    def averaged_tensors(model) -> dict[str, torch.Tensor]:
        return {name: tensor for name, tensor in model.state_dict().items() if tensor.is_floating_point()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        saved = os.path.join(self.resume_from, EMA_FILE) if self.resume_from else None
        if saved and os.path.isfile(saved):
            self.average = load_file(saved)
        else:
            self.average = {name: t.detach().clone() for name, t in self.averaged_tensors(model).items()}

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        decay = min(self.decay, (1 + state.global_step) / (10 + state.global_step))
        for name, tensor in self.averaged_tensors(model).items():
            self.average[name].lerp_(tensor.detach(), 1 - decay)
        if control.should_evaluate:
            self.swap_in(model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if control.should_evaluate:
            self.swap_in(model)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.raw is not None:  # back to the raw weights, which training and the checkpoint continue from
            model.load_state_dict(self.raw, strict=False)
            self.raw = None

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            save_file({name: t.contiguous() for name, t in self.average.items()}, os.path.join(folder, EMA_FILE))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.on_evaluate(args, state, control, model=model)
        model.load_state_dict(self.average, strict=False)  # the saved and finally evaluated model is the average

    def swap_in(self, model) -> None:
        if self.raw is None:
            self.raw = {name: t.detach().clone() for name, t in self.averaged_tensors(model).items()}
            model.load_state_dict(self.average, strict=False)
