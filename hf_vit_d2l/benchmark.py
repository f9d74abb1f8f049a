"""Side-by-side speed measurements: this model, stock transformers' ViT, the book's module, data, Trainer, bf16.

`run_benchmark(BenchmarkOptions(...))` measures everything in one process and returns a JSON-able dict;
`format_table(result)` renders it. `scripts/benchmark.py` is the command-line front end.

Method: every timed unit (a "repeat") runs `steps` training steps (forward + backward + SGD step, the book's
optimizer) on a fixed random batch; all models first run `warmup` untimed repeats, then the models' repeats are
interleaved (model A, B, C, ... , A, B, C, ...) so that drift in machine load hits all of them alike; the reported
figure is the median over `repeats`. Ratios: `vs_transformers` = img/s / stock transformers ViT's img/s in the same
run; `vs_this_fp32` = img/s / this model's (eager, fp32) img/s; `matmul_fraction` = img/s x FLOPs per image /
measured matmul peak of the dtype the model computes in (1.0 would be a model that is nothing but large matmuls).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from .configuration_vit_d2l import ViTD2LConfig
from .modeling_vit_d2l import ViTD2LForImageClassification
from .presets import get_preset

TRAIN_MODELS = (
    "this_eager",
    "this_sdpa",
    "transformers_vit",
    "d2l_book",
    "this_fast_fp32",
    "this_bf16_autocast",
    "this_bf16_master",
)
SECTIONS = ("matmul", "train", "inference", "data", "trainer", "loss_curve")
MODEL_DESCRIPTIONS = {
    "this_eager": "ViTD2LForImageClassification, attn_implementation='eager'",
    "this_sdpa": "ViTD2LForImageClassification, attn_implementation='sdpa'",
    "transformers_vit": "transformers.ViTForImageClassification at the identical config",
    "d2l_book": "the book's own ViT module (hf_vit_d2l.d2l_reference.ViT)",
    "this_fast_fp32": "this model + hf_vit_d2l.fast.apply_fast_path (FastDropout, matmul patch embedding), fp32",
    "this_bf16_autocast": "this model + fast path, fp32 weights, torch.autocast(bfloat16)",
    "this_bf16_master": "this model + fast path, bf16 weights, fp32 master weights in the optimizer",
}


class BenchmarkError(ValueError):
    """Bad benchmark options (message says which and what to use instead)."""


@dataclass
class BenchmarkOptions:
    batch_size: int = 128
    preset: str = "vit_d2l_fashion_mnist"
    config_overrides: dict = field(default_factory=dict)
    dtype: str = "fp32"  # the precision of the four main models: fp32, or bf16 (autocast) for all of them alike
    torch_compile: bool = False
    device: str = "cpu"
    steps: int = 2  # training steps per timed repeat
    repeats: int = 5
    warmup: int = 1
    latency_calls: int = 20
    data_samples: int = 2048
    trainer_steps: int = 10
    loss_curve_steps: int = 40  # steps of the fp32 vs bf16-master loss-curve comparison (real data)
    skip: list = field(default_factory=list)  # section names (matmul, train, ...) or model names
    models: list = field(default_factory=lambda: list(TRAIN_MODELS))
    data_dir: str | None = None
    seed: int = 0
    matmul_size: int = 2048

    def validate(self) -> None:
        if self.batch_size < 1:
            raise BenchmarkError(f"--batch_size must be >= 1, got {self.batch_size}.")
        for name in ("steps", "repeats", "latency_calls", "data_samples", "trainer_steps", "loss_curve_steps"):
            if getattr(self, name) < 1:
                raise BenchmarkError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.warmup < 0:
            raise BenchmarkError(f"--warmup must be >= 0, got {self.warmup}.")
        if self.dtype not in ("fp32", "bf16"):
            raise BenchmarkError(f"--dtype must be 'fp32' or 'bf16', got {self.dtype!r}.")
        if self.device not in ("cpu", "cuda"):
            raise BenchmarkError(f"--device must be 'cpu' or 'cuda', got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise BenchmarkError(
                "--device cuda was asked for, but torch.cuda.is_available() is False. Use --device cpu."
            )
        unknown = [s for s in self.skip if s not in SECTIONS and s not in TRAIN_MODELS]
        if unknown:
            raise BenchmarkError(f"--skip got unknown names {unknown}; choose from {list(SECTIONS + TRAIN_MODELS)}.")
        unknown = [m for m in self.models if m not in TRAIN_MODELS]
        if unknown:
            raise BenchmarkError(f"--models got unknown names {unknown}; choose from {list(TRAIN_MODELS)}.")
        if not isinstance(self.config_overrides, dict):
            raise BenchmarkError("--config_overrides must be a JSON object, e.g. '{\"hidden_size\": 64}'.")


# ------------------------------------------------------------------------------------------------------ FLOPs
def flops_per_image(config: ViTD2LConfig) -> dict[str, float]:
    """Matmul FLOPs (2 x multiply-adds) of one image: forward, and training (= 3 x forward: fwd, dgrad, wgrad)."""
    d, dff, t = config.hidden_size, config.intermediate_size, config.num_patches + 1
    patch = config.num_patches * d * config.num_channels * config.patch_size**2
    per_layer = 4 * t * d * d + 2 * t * t * d + 2 * t * d * dff  # W_q,k,v,o; QK^T and AV; MLP
    head = d * config.num_labels
    forward = 2 * (patch + config.num_hidden_layers * per_layer + head)
    return {"forward": float(forward), "train": float(3 * forward)}


# ---------------------------------------------------------------------------------------------------- helpers
def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def measure_matmul_peak(dtype: torch.dtype, device: str, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of square `size` matmuls in `dtype` (median of `repeats` timings of a few calls each)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    calls = 4 if device == "cpu" else 50
    for _ in range(2):
        torch.matmul(a, b)
    _sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b)
        _sync(device)
        rates.append(2 * size**3 * calls / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def build_transformers_vit(model: ViTD2LForImageClassification) -> nn.Module:
    """Stock `transformers.ViTForImageClassification` at `model`'s config, with its weights where shapes allow.

    Uses `hf_vit_d2l.convert.to_transformers_vit` when available (exact weight transfer); otherwise builds the stock
    model at the identical config (dropouts, no q/k/v bias, eps 1e-5) with its own init, which times the same.
    """
    try:
        from .convert import to_transformers_vit  # noqa: PLC0415 (lands with the conversion work)

        return to_transformers_vit(model)
    except ImportError:
        pass
    from transformers import ViTConfig, ViTForImageClassification

    c = model.config
    stock = ViTConfig(
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size,
        hidden_act=c.hidden_act,
        hidden_dropout_prob=c.block_dropout_prob,
        attention_probs_dropout_prob=c.block_dropout_prob,
        layer_norm_eps=c.layer_norm_eps,
        image_size=c.image_size,
        patch_size=c.patch_size,
        num_channels=c.num_channels,
        qkv_bias=c.qkv_bias,
        num_labels=c.num_labels,
    )
    return ViTForImageClassification(stock)  # no pooler: classifies the <cls> token after the final LayerNorm


def build_d2l_book(config: ViTD2LConfig) -> nn.Module:
    from .d2l_reference import ViT

    return ViT(
        config.image_size,
        config.patch_size,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_hidden_layers,
        config.embedding_dropout_prob,
        config.block_dropout_prob,
        use_bias=config.qkv_bias,
        num_classes=config.num_labels,
        num_channels=config.num_channels,
    )


@dataclass
class _Runner:
    """One benchmarked model: a training step, an inference call, and its dtype bookkeeping."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    autocast: bool
    compute_dtype: str  # "fp32" or "bf16": which matmul peak it is compared with
    input_dtype: torch.dtype
    returns_logits: bool  # the book's module returns logits, not a ModelOutput
    compiled: nn.Module | None = None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        module = self.compiled if self.compiled is not None else self.model
        out = module(pixel_values.to(self.input_dtype))
        return out if self.returns_logits else out.logits

    def train_step(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> float:
        device_type = pixel_values.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.forward(pixel_values)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.inference_mode()
    def infer(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.autocast(pixel_values.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.forward(pixel_values)


def build_runner(name: str, config: ViTD2LConfig, options: BenchmarkOptions, lr: float = 0.1) -> _Runner:
    """Build one of `TRAIN_MODELS` on `options.device` with the book's SGD (lr 0.1)."""
    from .fast import apply_fast_path, to_bf16_with_master_weights

    torch.manual_seed(options.seed)
    main_bf16 = options.dtype == "bf16"
    autocast, compute, input_dtype, returns_logits = main_bf16, ("bf16" if main_bf16 else "fp32"), torch.float32, False
    if name in ("this_eager", "this_sdpa", "this_fast_fp32", "this_bf16_autocast", "this_bf16_master"):
        impl = "sdpa" if name == "this_sdpa" else "eager"
        model = ViTD2LForImageClassification._from_config(config, attn_implementation=impl)
    elif name == "transformers_vit":
        model = build_transformers_vit(ViTD2LForImageClassification._from_config(config, attn_implementation="eager"))
    elif name == "d2l_book":
        model, returns_logits = build_d2l_book(config), True
    else:
        raise BenchmarkError(f"Unknown model {name!r}; choose from {list(TRAIN_MODELS)}.")
    model = model.to(options.device).train()
    if name.startswith("this_fast") or name.startswith("this_bf16"):
        apply_fast_path(model)
    if name == "this_fast_fp32":
        autocast, compute = False, "fp32"
    elif name == "this_bf16_autocast":
        autocast, compute = True, "bf16"
    if name == "this_bf16_master":
        optimizer = to_bf16_with_master_weights(model, lambda params: torch.optim.SGD(params, lr=lr))
        autocast, compute, input_dtype = False, "bf16", torch.bfloat16
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    runner = _Runner(name, model, optimizer, autocast, compute, input_dtype, returns_logits)
    if options.torch_compile:
        runner.compiled = torch.compile(model)
    return runner


def _median_rate(samples: list[float]) -> float:
    return float(statistics.median(samples)) if samples else float("nan")


# ---------------------------------------------------------------------------------------------------- sections
def bench_training(runners: dict[str, _Runner], options: BenchmarkOptions) -> dict[str, dict]:
    device, batch = options.device, options.batch_size
    gen = torch.Generator().manual_seed(options.seed)
    x = torch.rand(batch, options._channels, options._image, options._image, generator=gen).to(device)
    y = torch.randint(0, options._labels, (batch,), generator=gen).to(device)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    losses: dict[str, list[float]] = {name: [] for name in runners}
    peak_mem: dict[str, float] = {}
    for name, runner in runners.items():  # warm-up (and compilation), not timed
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(options.warmup * options.steps):
            runner.train_step(x, y)
        _sync(device)
        if device == "cuda":
            peak_mem[name] = torch.cuda.max_memory_allocated() / 2**20
    for _ in range(options.repeats):
        for name, runner in runners.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(options.steps):
                loss = runner.train_step(x, y)
            _sync(device)
            rates[name].append(batch * options.steps / (time.perf_counter() - start))
            losses[name].append(float(loss))
    return {
        name: {
            "img_per_s": _median_rate(rates[name]),
            "samples_img_per_s": [round(r, 2) for r in rates[name]],
            "final_loss": losses[name][-1] if losses[name] else None,
            "peak_memory_mib": peak_mem.get(name),
        }
        for name in runners
    }


def bench_inference(runners: dict[str, _Runner], options: BenchmarkOptions) -> dict[str, dict]:
    device, batch = options.device, options.batch_size
    gen = torch.Generator().manual_seed(options.seed + 1)
    x = torch.rand(batch, options._channels, options._image, options._image, generator=gen).to(device)
    single = x[:1].clone()
    for runner in runners.values():
        runner.model.eval()
        for _ in range(max(options.warmup, 1)):
            runner.infer(x)
            runner.infer(single)
    _sync(device)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    latency: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(options.repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            for _ in range(options.steps):
                runner.infer(x)
            _sync(device)
            rates[name].append(batch * options.steps / (time.perf_counter() - start))
            calls = max(1, options.latency_calls // options.repeats)
            for _ in range(calls):
                start = time.perf_counter()
                runner.infer(single)
                _sync(device)
                latency[name].append((time.perf_counter() - start) * 1e3)
    for runner in runners.values():
        runner.model.train()
    return {
        name: {"img_per_s": _median_rate(rates[name]), "latency_ms_batch1": _median_rate(latency[name])}
        for name in runners
    }


def _read_idx_gz(path: str) -> np.ndarray:
    """Minimal IDX reader for the fallback path (data.py's `read_idx` validates more and is used when present)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {data[:4]!r}).")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_benchmark_images(num: int, data_dir: str | None = None):
    """`num` Fashion-MNIST training images as a `datasets.Dataset` (image: PIL "L", label), real data.

    Uses `hf_vit_d2l.data.load_fashion_mnist(source="local")` when that module is present, else reads the IDX files.
    """
    try:
        from .data import load_fashion_mnist  # noqa: PLC0415

        kwargs = {"source": "local"} if data_dir is None else {"source": "local", "data_dir": data_dir}
        train = load_fashion_mnist(**kwargs)["train"]
        return train.select(range(min(num, len(train))))
    except ImportError:
        pass
    import datasets

    from .configuration_vit_d2l import FASHION_MNIST_LABELS

    data_dir = data_dir or "/usr/share/datasets/fashion-mnist"
    images_path = os.path.join(data_dir, "train-images-idx3-ubyte.gz")
    labels_path = os.path.join(data_dir, "train-labels-idx1-ubyte.gz")
    for path in (images_path, labels_path):
        if not os.path.exists(path):
            raise BenchmarkError(
                f"Fashion-MNIST file {path} not found. Install the Debian package dataset-fashion-mnist "
                "(scripts/setup.sh does) or pass --data_dir with the four IDX .gz files, or --skip data trainer."
            )
    images, labels = _read_idx_gz(images_path)[:num], _read_idx_gz(labels_path)[:num]
    from PIL import Image

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_LABELS))}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a, mode="L") for a in images], "label": labels.tolist()}, features=features
    )


def _make_collator(image_processor):
    try:
        from .data import ImageClassificationCollator  # noqa: PLC0415

        return ImageClassificationCollator(image_processor)
    except ImportError:

        def collate(examples):
            pixel_values = image_processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
            return {"pixel_values": pixel_values, "labels": torch.tensor([e["label"] for e in examples])}

        return collate


def _image_processor(config: ViTD2LConfig):
    from .image_processing_vit_d2l import ViTD2LImageProcessor

    return ViTD2LImageProcessor(size={"height": config.image_size, "width": config.image_size})


def bench_data(config: ViTD2LConfig, options: BenchmarkOptions, dataset) -> dict:
    """Images per second from the dataset through the image processor and collation (no model).

    Uses `hf_vit_d2l.data.measure_pipeline_throughput` (DataLoader + collator, as in training) for both collator
    backends ("pil": the image processor, what inference sees; "tensor": batched torch resize) when available.
    """
    batch = min(options.batch_size, len(dataset))
    try:
        from .data import measure_pipeline_throughput  # noqa: PLC0415
    except ImportError:
        measure_pipeline_throughput = None
    if measure_pipeline_throughput is not None:
        result = {"source": "hf_vit_d2l.data.measure_pipeline_throughput, num_workers=0"}
        for backend in ("pil", "tensor"):
            try:
                row = measure_pipeline_throughput(
                    dataset,
                    _image_processor(config),
                    backend=backend,
                    batch_size=batch,
                    num_batches=max(1, len(dataset) // batch - 1),
                    warmup_batches=1,
                )
            except ValueError as error:  # e.g. the tensor backend's preconditions
                result[f"{backend}_error"] = str(error)
                continue
            result[f"{backend}_img_per_s"] = float(row["img_per_s"])
        result["img_per_s"] = result.get("pil_img_per_s", float("nan"))
        return result
    collate = _make_collator(_image_processor(config))
    rates = []
    rows = [dataset[i] for i in range(len(dataset))]
    for _ in range(options.repeats):
        start = time.perf_counter()
        count = 0
        for i in range(0, len(rows), batch):
            count += collate(rows[i : i + batch])["pixel_values"].shape[0]
        rates.append(count / (time.perf_counter() - start))
    return {"img_per_s": _median_rate(rates), "source": "image processor + collation, rows pre-read"}


def bench_trainer(config: ViTD2LConfig, options: BenchmarkOptions, dataset, bare_rate: float | None) -> dict:
    """The full `transformers.Trainer` loop (dataloader, collation, logging every step) on real images.

    Same model (this_eager, or bf16 autocast with --dtype bf16), the book's SGD lr 0.1, batch `batch_size`;
    the first `warmup` steps are excluded from the timing. `vs_bare_step` = this rate / this_eager's bare step rate.
    """
    import tempfile

    from transformers import Trainer, TrainerCallback, TrainingArguments

    steps, warm = options.trainer_steps, max(options.warmup, 1)
    needed = options.batch_size * (steps + warm)
    if len(dataset) < needed:
        dataset = _repeat_dataset(dataset, needed)
    step_times: list[float] = []

    class _Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _sync(options.device)
            step_times.append(time.perf_counter())

    torch.manual_seed(options.seed)
    model = ViTD2LForImageClassification._from_config(config, attn_implementation="eager")
    collate = _make_collator(_image_processor(config))
    with tempfile.TemporaryDirectory(prefix="vit_d2l_bench_") as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=options.batch_size,
            max_steps=steps + warm,
            learning_rate=0.1,
            optim="sgd",
            lr_scheduler_type="constant",
            weight_decay=0.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            remove_unused_columns=False,
            use_cpu=options.device == "cpu",
            bf16=options.dtype == "bf16",
            torch_compile=options.torch_compile,
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=options.seed,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[_Clock()])
        with contextlib.redirect_stdout(open(os.devnull, "w")):
            trainer.train()
    timed = step_times[warm - 1 :]
    rate = options.batch_size * (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
    return {
        "img_per_s": rate,
        "steps_timed": len(timed) - 1,
        "vs_bare_step": (rate / bare_rate) if bare_rate else None,
    }


def _repeat_dataset(dataset, needed: int):
    import datasets

    copies = math.ceil(needed / len(dataset))
    return datasets.concatenate_datasets([dataset] * copies).select(range(needed))


def compare_loss_curves(config: ViTD2LConfig, options: BenchmarkOptions, dataset) -> dict:
    """Train this model from one init on the same real batches in fp32 and with the bf16 fast path; both curves.

    The fp32 run is the model as shipped (nn.Dropout, conv patch embedding); the bf16 run is `apply_fast_path` +
    bf16 weights + fp32 masters (`this_bf16_master`). Dropout masks differ between the runs (different RNG use), so
    the curves agree only within dropout noise; `fp32_repeat` is a second fp32 run with another dropout seed, which
    shows the size of that noise.
    """
    from .fast import apply_fast_path, to_bf16_with_master_weights

    collate = _make_collator(_image_processor(config))
    batch, steps = options.batch_size, options.loss_curve_steps
    needed = batch * steps
    if len(dataset) < needed:
        dataset = _repeat_dataset(dataset, needed)
    batches = [collate([dataset[j] for j in range(i * batch, (i + 1) * batch)]) for i in range(steps)]
    torch.manual_seed(options.seed)
    initial = ViTD2LForImageClassification._from_config(config, attn_implementation="eager").state_dict()

    def run(kind: str, dropout_seed: int) -> list[float]:
        model = ViTD2LForImageClassification._from_config(config, attn_implementation="eager")
        model.load_state_dict(initial)
        model.to(options.device).train()
        if kind == "bf16_master":
            apply_fast_path(model)
            optimizer = to_bf16_with_master_weights(model, lambda params: torch.optim.SGD(params, lr=0.1))
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(dropout_seed)
        losses = []
        for b in batches:
            pixel_values = b["pixel_values"].to(options.device)
            loss = model(pixel_values=pixel_values, labels=b["labels"].to(options.device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        return losses

    curves = {"fp32": run("fp32", 1), "fp32_repeat": run("fp32", 2), "bf16_master": run("bf16_master", 1)}
    tail = max(1, steps // 4)

    def mean_tail(values):
        return float(np.mean(values[-tail:]))

    return {
        "steps": steps,
        "batch_size": batch,
        "curves": curves,
        "mean_loss_last_quarter": {name: mean_tail(curve) for name, curve in curves.items()},
        "bf16_minus_fp32_last_quarter": mean_tail(curves["bf16_master"]) - mean_tail(curves["fp32"]),
        "fp32_seed_noise_last_quarter": mean_tail(curves["fp32_repeat"]) - mean_tail(curves["fp32"]),
    }


# ---------------------------------------------------------------------------------------------------- driver
def machine_info(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split())
                info["cpu_flags"] = sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
                break
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_benchmark(options: BenchmarkOptions, log: Callable[[str], None] | None = None) -> dict:
    """Measure every section not in `options.skip`; return a JSON-able dict (see `format_table`)."""
    options.validate()
    log = log or (lambda message: None)
    try:
        config = get_preset(options.preset, **options.config_overrides)
    except (TypeError, ValueError) as error:
        raise BenchmarkError(f"Bad --config_overrides {options.config_overrides}: {error}") from error
    options._channels, options._image, options._labels = config.num_channels, config.image_size, config.num_labels
    flops = flops_per_image(config)
    result: dict = {
        "options": asdict(options),
        "config": {k: getattr(config, k) for k in ("image_size", "patch_size", "hidden_size", "intermediate_size")}
        | {
            "num_attention_heads": config.num_attention_heads,
            "num_hidden_layers": config.num_hidden_layers,
            "num_patches": config.num_patches,
            "num_parameters": sum(p.numel() for p in ViTD2LForImageClassification(config).parameters()),
        },
        "machine": machine_info(options.device),
        "flops_per_image": flops,
        "descriptions": dict(MODEL_DESCRIPTIONS),
    }
    start_all = time.perf_counter()
    if "matmul" not in options.skip:
        log("matmul peak ...")
        result["matmul_gflops"] = {
            dt: measure_matmul_peak(
                getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dt]),
                options.device,
                options.matmul_size,
                options.repeats,
            )
            for dt in ("fp32", "bf16")
        }
    peak = result.get("matmul_gflops", {})
    names = [m for m in options.models if m not in options.skip]
    runners = {}
    if names and ("train" not in options.skip or "inference" not in options.skip):
        runners = {name: build_runner(name, config, options) for name in names}
        result["num_parameters"] = {
            name: sum(p.numel() for p in runner.model.parameters()) for name, runner in runners.items()
        }
    if runners and "train" not in options.skip:
        log(f"training: {', '.join(runners)} ...")
        train = bench_training(runners, options)
        reference = train.get("transformers_vit", {}).get("img_per_s")
        this_fp32 = train.get("this_eager", {}).get("img_per_s") if options.dtype == "fp32" else None
        for name, row in train.items():
            rate = row["img_per_s"]
            compute = runners[name].compute_dtype
            row["compute_dtype"] = compute
            row["vs_transformers"] = rate / reference if reference else None
            row["vs_this_fp32"] = rate / this_fp32 if this_fp32 else None
            row["matmul_fraction"] = rate * flops["train"] / (peak[compute] * 1e9) if compute in peak else None
            row["matmul_limit_img_per_s"] = peak[compute] * 1e9 / flops["train"] if compute in peak else None
        result["train"] = train
    if runners and "inference" not in options.skip:
        log("inference ...")
        inference = bench_inference(runners, options)
        reference = inference.get("transformers_vit", {}).get("img_per_s")
        for row in inference.values():
            row["vs_transformers"] = row["img_per_s"] / reference if reference else None
        result["inference"] = inference
    runners.clear()
    dataset = None
    if any(section not in options.skip for section in ("data", "trainer", "loss_curve")):
        needed = max(
            options.data_samples,
            options.batch_size * (options.trainer_steps + max(options.warmup, 1)),
            options.batch_size * options.loss_curve_steps,
        )
        dataset = load_benchmark_images(needed, options.data_dir)
    if "data" not in options.skip:
        log("data pipeline ...")
        subset = dataset.select(range(min(options.data_samples, len(dataset))))
        result["data"] = bench_data(config, options, subset)
    if "trainer" not in options.skip:
        log("Trainer loop ...")
        bare = result.get("train", {}).get("this_eager", {}).get("img_per_s")
        result["trainer"] = bench_trainer(config, options, dataset, bare)
    if "loss_curve" not in options.skip:
        log("loss curves fp32 vs bf16 ...")
        result["loss_curve"] = compare_loss_curves(config, options, dataset)
    result["peak_rss_mib"] = peak_rss_mib()
    if options.device == "cuda":
        result["peak_cuda_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_seconds"] = time.perf_counter() - start_all
    return result


def _fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


def _load(machine: dict, key: str) -> str:
    values = machine.get(key)
    return f"{values[0]:.2f}" if values else "?"


def format_table(result: dict) -> str:
    """A Markdown table (plus notes) of `run_benchmark`'s result."""
    lines = []
    opts = result["options"]
    machine = result["machine"]
    lines.append(
        f"Machine: {machine.get('cpu', '?')}, {machine['cpu_threads']} torch threads"
        + (f", GPU {machine['gpu']}" if "gpu" in machine else "")
        + f"; torch {machine['torch']}, transformers {machine.get('transformers', '?')}; load average "
        f"{_load(machine, 'load_average_at_start')} at start, {_load(machine, 'load_average_at_end')} at end."
    )
    flops = result["flops_per_image"]
    lines.append(
        f"Config: {result['config']}; {flops['train'] / 1e9:.3f} GFLOP per trained image "
        f"({flops['forward'] / 1e9:.3f} forward). Batch {opts['batch_size']}, dtype {opts['dtype']}, "
        f"device {opts['device']}, torch_compile {opts['torch_compile']}; median of {opts['repeats']} repeats x "
        f"{opts['steps']} steps after {opts['warmup']} warm-up repeat(s)."
    )
    if "matmul_gflops" in result:
        mm = result["matmul_gflops"]
        lines.append(
            f"Matmul peak ({opts['matmul_size']}^2): fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} GFLOP/s "
            f"-> training limit {mm['fp32'] * 1e9 / flops['train']:.0f} img/s fp32, "
            f"{mm['bf16'] * 1e9 / flops['train']:.0f} img/s bf16."
        )
    lines.append("")
    if "train" in result:
        lines.append(
            "| model | train img/s | vs transformers | vs this fp32 | of matmul limit | infer img/s | "
            "latency (1 img) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        inference = result.get("inference", {})
        for name, row in result["train"].items():
            inf = inference.get(name, {})
            lines.append(
                f"| {name} ({row['compute_dtype']}) | {_fmt(row['img_per_s'])} "
                f"| {_fmt(row['vs_transformers'], '.2f', 'x')} "
                f"| {_fmt(row['vs_this_fp32'], '.2f', 'x')} | {_fmt(row['matmul_fraction'], '.0%')} "
                f"| {_fmt(inf.get('img_per_s'))} | {_fmt(inf.get('latency_ms_batch1'), '.1f', ' ms')} |"
            )
        lines.append("")
    if "data" in result:
        data = result["data"]
        extra = f", tensor backend {data['tensor_img_per_s']:.0f} img/s" if "tensor_img_per_s" in data else ""
        lines.append(f"Data pipeline alone: {data['img_per_s']:.0f} img/s{extra} ({data['source']}).")
    if "trainer" in result:
        tr = result["trainer"]
        lines.append(
            f"Full Trainer loop (this_eager, real Fashion-MNIST, {tr['steps_timed']} timed steps): "
            f"{_fmt(tr['img_per_s'])} img/s = {_fmt(tr['vs_bare_step'], '.2f', 'x')} the bare training step."
        )
    if "loss_curve" in result:
        lc = result["loss_curve"]
        means = lc["mean_loss_last_quarter"]
        lines.append(
            f"Loss curves ({lc['steps']} SGD steps, batch {lc['batch_size']}, real data, same init), mean loss over "
            f"the last quarter: fp32 {means['fp32']:.4f}, fp32 other dropout seed {means['fp32_repeat']:.4f}, "
            f"bf16 master {means['bf16_master']:.4f} (bf16 - fp32 = {lc['bf16_minus_fp32_last_quarter']:+.4f}; "
            f"seed noise {lc['fp32_seed_noise_last_quarter']:+.4f})."
        )
    mem = f"Peak RSS of the process: {result['peak_rss_mib']:.0f} MiB"
    if "peak_cuda_memory_mib" in result:
        mem += f"; peak CUDA memory: {result['peak_cuda_memory_mib']:.0f} MiB"
    lines.append(mem + f". Wall time {result['wall_seconds']:.0f} s.")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> None:
    """Write `result` atomically (temporary file + os.replace)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(result, handle, indent=2, default=str)
    os.replace(tmp, path)
