#!/usr/bin/env python
"""Training speed of this model against stock transformers ViT and the book's module, the Trainer, bf16, compile.

    python benchmarks/benchmark.py                                   # all sections, the book's config, batch 128
    python benchmarks/benchmark.py --json_out docs/benchmark_cpu.json
    python benchmarks/benchmark.py --sections train --repeats 9
    python benchmarks/benchmark.py --device cuda --batch_size 512

Method: every timed unit (a "repeat") runs `--steps` training steps (forward, backward, the book's SGD step) on a
fixed batch; each unit first runs untimed warm-up steps, then the units' repeats are interleaved (A, B, C, A, B, C,
...) so that drift in machine load (the CPU may be shared) hits all of them alike. A rate is the median over the
repeats; a ratio A/B is the median of the per-round ratios (each round times A and B back to back). The JSON keeps
every repeat. Sections:

- train: this model (eager and sdpa attention) vs `to_transformers_vit` (stock ViT, same config and weights, sdpa
  and eager; and with its dropouts moved to the book's places, the same work as ours) vs the book's module
  (tests/d2l_reference.py), fp32.
- bf16: fp32 vs `torch.autocast(bfloat16)`, only where the CPU has native bf16 (or on a GPU): elsewhere bf16 runs
  through a slow fallback and the section is skipped.
- compile: eager vs `torch.compile(model)` for each of `--compile_presets`; the first compiled step (compilation)
  is timed and the break-even point over a run is derived from it.
- trainer: `transformers.Trainer` with the book recipe's optimizer arguments (PIL image processor in the collator,
  real Fashion-MNIST images) against the bare step on a ready batch and the bare step with collation, and variants
  that change one TrainingArguments field.
- data: images per second through the dataset, the image processor and the collator alone (a DataLoader).
"""

import atexit
import contextlib
import gzip
import io
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# A fresh inductor cache, set before torch is imported: the compile time measured is a first run's, not a cache hit.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="vit_d2l_inductor_")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import numpy as np
import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the book's module, tests/d2l_reference.py

from d2l_reference import ViT  # noqa: E402

from hf_vit_d2l import ViTD2LForImageClassification, get_preset  # noqa: E402
from hf_vit_d2l.convert import to_transformers_vit  # noqa: E402
from hf_vit_d2l.fast_dropout import replace_dropout_modules  # noqa: E402
from hf_vit_d2l.image_processing_vit_d2l import ViTD2LImageProcessor  # noqa: E402
from hf_vit_d2l.presets import parse_config_overrides  # noqa: E402
from hf_vit_d2l.training import load_recipe  # noqa: E402
from hf_vit_d2l.utils import cpu_count, cpu_has_native_bf16, cpu_isa, write_json_atomic  # noqa: E402

SECTIONS = ("train", "bf16", "compile", "trainer", "data")
MODELS = {
    "this_eager": "ViTD2LForImageClassification, eager attention",
    "this_sdpa": "ViTD2LForImageClassification, sdpa attention (the default)",
    "this_sdpa_fast_dropout": "the same, with --fast_dropout's modules (the faster CPU dropout masks)",
    "transformers_vit": "transformers.ViTForImageClassification via to_transformers_vit, sdpa (its default)",
    "transformers_vit_eager": "the same stock ViT, eager attention",
    "transformers_vit_book_dropout": "the same stock ViT, sdpa, with the book's dropouts (after GELU, none after W_o)",
    "d2l_book": "the book's ViT module (tests/d2l_reference.py)",
}
# The Trainer as the book recipe runs it (hf_vit_d2l/recipes/book.json: SGD, constant lr 0.1, no clipping; logging
# every 500 steps, 0 workers), and variants that differ from it in one argument.
BOOK_RECIPE = load_recipe("book")
TRAINER_ARGUMENTS = {
    key: BOOK_RECIPE[key] for key in ("optim", "learning_rate", "weight_decay", "lr_scheduler_type", "max_grad_norm")
}
TRAINER_VARIANTS = {
    "trainer": {},
    "trainer_log_every_step": {"logging_steps": 1},
    "trainer_grad_clip_1": {"max_grad_norm": 1.0},  # the Trainer's default; the improved and quick recipes'
    "trainer_1_worker": {"dataloader_num_workers": 1},
}
IMAGES_PER_EPOCH = 60_000  # Fashion-MNIST's training split


@dataclass
class BenchmarkArguments:
    preset: str = field(default="vit_d2l_fashion_mnist", metadata={"help": "Model preset (hf_vit_d2l.PRESETS)."})
    config_overrides: str = field(default="", metadata={"help": "Config changes, as train.py's: 'hidden_size=64'."})
    batch_size: int = field(default=128, metadata={"help": "Images per training step."})
    steps: int = field(default=2, metadata={"help": "Training steps per timed repeat."})
    repeats: int = field(default=3, metadata={"help": "Interleaved timed repeats per unit (median reported)."})
    warmup: int = field(default=1, metadata={"help": "Untimed warm-up steps per unit."})
    sections: list[str] = field(default_factory=lambda: list(SECTIONS), metadata={"help": f"Any of {SECTIONS}."})
    models: list[str] = field(default_factory=lambda: list(MODELS), metadata={"help": f"Any of {list(MODELS)}."})
    compile_presets: list[str] = field(
        default_factory=lambda: ["vit_d2l_fashion_mnist", "vit_d2l_fashion_mnist_quick"],
        metadata={"help": "Presets whose eager vs torch.compile training step is timed."},
    )
    run_epochs: float = field(default=10.0, metadata={"help": "Epochs of the run that torch.compile is judged over."})
    trainer_steps: int = field(default=3, metadata={"help": "Timed steps per Trainer repeat (after one warm-up)."})
    data_samples: int = field(default=2048, metadata={"help": "Images pushed through the data pipeline."})
    data_dir: str = field(default="/usr/share/datasets/fashion-mnist", metadata={"help": "Fashion-MNIST IDX files."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    json_out: str | None = field(default=None, metadata={"help": "Write the full result (every repeat) here."})
    seed: int = field(default=0, metadata={"help": "Seed of weights, inputs and the Trainer."})

    def __post_init__(self):
        for name in ("batch_size", "steps", "repeats", "trainer_steps", "data_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        for flag, given, allowed in (("sections", self.sections, SECTIONS), ("models", self.models, MODELS)):
            if unknown := [g for g in given if g not in allowed]:
                raise ValueError(f"--{flag} got unknown names {unknown}; choose from {list(allowed)}.")
        if self.device not in ("cpu", "cuda") or (self.device == "cuda" and not torch.cuda.is_available()):
            raise ValueError(f"--device {self.device!r} is not available here; use --device cpu.")
        self.config = load_config(self.preset, self.config_overrides)


def load_config(preset: str, overrides: str):
    """The preset's config with `overrides` ('hidden_size=64,num_blks=1', as train.py's) applied."""
    try:
        return get_preset(preset, **parse_config_overrides(overrides))
    except (ValueError, StrictDataclassError) as error:  # names the field(s) and the value(s)
        raise ValueError(f"Bad --preset/--config_overrides: {error}") from None


# ------------------------------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleave(units: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each unit (which returns its img/s) `repeats` times, round-robin; every rate of every unit."""
    rates = {name: [] for name in units}
    for _ in range(repeats):
        for name, unit in units.items():
            rates[name].append(unit())
    return rates


def summarise(rates: dict[str, list[float]], reference: str | None = None) -> dict[str, dict]:
    """Median img/s per unit, and the median of its per-round ratios to `reference` (same round, back to back)."""
    rows = {}
    for name, values in rates.items():
        rows[name] = {"img_per_s": statistics.median(values), "repeats_img_per_s": [round(v, 2) for v in values]}
        if reference in rates:
            rows[name][f"vs_{reference}"] = statistics.median(v / r for v, r in zip(values, rates[reference]))
    return rows


def timed_steps(step: Callable[[], None], images: int, steps: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return images * steps / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------------- models
def build_model(name: str, config, seed: int) -> nn.Module:
    """One of MODELS, all from the same initial weights where the architecture allows (the book's has its own)."""
    torch.manual_seed(seed)
    if name == "d2l_book":
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
    model = ViTD2LForImageClassification(config)
    if name.startswith("transformers_vit"):
        model = to_transformers_vit(model)
    if name == "this_sdpa_fast_dropout":  # what --fast_dropout gains (sdpa drops the attention weights itself)
        replace_dropout_modules(model)
    if name == "transformers_vit_book_dropout":  # the same dropout work as the book's model, through stock code
        drop = config.block_dropout_prob
        for layer in model.vit.layers:
            layer.dropout = nn.Identity()  # after the attention and after the MLP; the book drops the MLP's only
            layer.mlp.activation_fn = nn.Sequential(layer.mlp.activation_fn, nn.Dropout(drop))
            layer.mlp.fc2 = nn.Sequential(layer.mlp.fc2, nn.Dropout(drop))
    model.set_attn_implementation("eager" if name.endswith("eager") else "sdpa")
    return model


def train_step_fn(model: nn.Module, bf16: bool = False) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """`step(x, y)`: forward, cross-entropy, backward and the book's SGD (lr 0.1) step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        logits = out if torch.is_tensor(out) else out.logits
        nn.functional.cross_entropy(logits.float(), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def random_batch(config, args: BenchmarkArguments) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, config.num_channels, config.image_size, config.image_size)
    x, y = torch.rand(shape, generator=gen), torch.randint(0, config.num_labels, (args.batch_size,), generator=gen)
    return x.to(args.device), y.to(args.device)


def unit(step: Callable[[], None], args: BenchmarkArguments) -> Callable[[], float]:
    """Warm `step` up now; return the timed repeat (img/s of `args.steps` steps)."""
    for _ in range(args.warmup):
        step()
    return lambda: timed_steps(step, args.batch_size, args.steps, args.device)


# -------------------------------------------------------------------------------------------------- sections
def bench_train(config, args: BenchmarkArguments) -> dict:
    x, y = random_batch(config, args)
    models = {name: build_model(name, config, args.seed).to(args.device) for name in args.models}
    steps = {name: train_step_fn(model) for name, model in models.items()}
    units = {name: unit(lambda step=step: step(x, y), args) for name, step in steps.items()}
    reference = "transformers_vit" if "transformers_vit" in units else None
    rows = summarise(interleave(units, args.repeats), reference)
    for peer in ("d2l_book", "transformers_vit_book_dropout"):  # the two peers that do the same work as ours
        if peer in rows:
            base = rows[peer]["repeats_img_per_s"]
            for row in rows.values():
                row[f"vs_{peer}"] = statistics.median(v / b for v, b in zip(row["repeats_img_per_s"], base))
    for name, row in rows.items():
        row["description"] = MODELS[name]
        row["num_parameters"] = sum(p.numel() for p in models[name].parameters())
    return {"models": rows}


def bench_bf16(config, args: BenchmarkArguments) -> dict:
    if args.device == "cpu" and not cpu_has_native_bf16():
        return {
            "skipped": f"this CPU ({cpu_isa()}) has no native bf16 (no avx512_bf16/amx_bf16): bf16 matmuls run "
            "through a slow fallback there, so bf16 is not measured; train in fp32."
        }
    x, y = random_batch(config, args)
    fp32 = train_step_fn(build_model("this_sdpa", config, args.seed).to(args.device))
    bf16 = train_step_fn(build_model("this_sdpa", config, args.seed).to(args.device), bf16=True)
    units = {"fp32": unit(lambda: fp32(x, y), args), "bf16_autocast": unit(lambda: bf16(x, y), args)}
    return {"models": summarise(interleave(units, args.repeats), "fp32")}


def bench_compile_preset(preset: str, args: BenchmarkArguments) -> dict:
    """Eager vs torch.compile of the default model; compile time = first compiled step - one eager step."""
    config = get_preset(preset)
    x, y = random_batch(config, args)
    eager = train_step_fn(build_model("this_sdpa", config, args.seed).to(args.device))
    compiled = train_step_fn(torch.compile(build_model("this_sdpa", config, args.seed).to(args.device)))
    eager_unit = unit(lambda: eager(x, y), args)
    try:
        sync(args.device)
        start = time.perf_counter()
        compiled(x, y)
        sync(args.device)
        first_step = time.perf_counter() - start
    except Exception as error:  # no C++ compiler, unsupported platform: report instead of failing the benchmark
        return {"error": f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"}
    units = {"eager": eager_unit, "compiled": unit(lambda: compiled(x, y), args)}
    rows = summarise(interleave(units, args.repeats), "eager")
    t_eager = args.batch_size / rows["eager"]["img_per_s"]
    t_compiled = args.batch_size / rows["compiled"]["img_per_s"]
    compile_seconds = max(first_step - t_eager, 0.0)
    run_steps = math.ceil(args.run_epochs * IMAGES_PER_EPOCH / args.batch_size)
    saving = t_eager - t_compiled
    return {
        "models": rows,
        "compile_seconds": compile_seconds,
        "break_even_steps": math.ceil(compile_seconds / saving) if saving > 0 else None,
        "run_steps": run_steps,
        "run_speedup_incl_compile": run_steps * t_eager / (compile_seconds + run_steps * t_compiled),
    }


def bench_compile(args: BenchmarkArguments) -> dict:
    with contextlib.redirect_stderr(io.StringIO()):  # inductor's warnings would bury the table
        result = {"presets": {preset: bench_compile_preset(preset, args) for preset in args.compile_presets}}
    return result | {"inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR")}


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (the Fashion-MNIST download format) as an array."""
    with gzip.open(path) as handle:
        data = handle.read()
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def fashion_mnist_slice(num: int, data_dir: str):
    """The first `num` real training images as a `datasets.Dataset` (PIL "L" images, as the Hub dataset has)."""
    import datasets
    from PIL import Image

    folder = Path(data_dir)
    files = [folder / f"train-{kind}-idx{nd}-ubyte.gz" for kind, nd in (("images", 3), ("labels", 1))]
    if missing := [str(f) for f in files if not f.exists()]:
        raise FileNotFoundError(
            f"Fashion-MNIST files {missing} not found: run scripts/setup.sh (Debian package dataset-fashion-mnist), "
            "pass --data_dir, or leave out the trainer and data sections (--sections train bf16 compile)."
        )
    images, labels = read_idx(files[0])[:num], read_idx(files[1])[:num]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    rows = {"image": [Image.fromarray(a, mode="L") for a in images], "label": labels.tolist()}
    return datasets.Dataset.from_dict(rows, features=features)


class Collator:
    """PIL images -> the model's image processor -> {"pixel_values", "labels"} (what a training collator does)."""

    def __init__(self, config):
        self.processor = ViTD2LImageProcessor(size={"height": config.image_size, "width": config.image_size})

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pixel_values = self.processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.tensor([e["label"] for e in examples])}


class StepClock(TrainerCallback):
    """Times the Trainer from the end of its first step to the end of its last: img/s of the loop.

    The first step (and the DataLoader's start, worker processes included) is the warm-up: it is not timed.
    """

    def __init__(self, device: str):
        self.device, self.ends = device, []

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.ends.append(time.perf_counter())


def trainer_unit(model, dataset, collator, args: BenchmarkArguments, out_dir: str, **overrides) -> Callable:
    def run() -> float:
        clock = StepClock(args.device)
        training_args = TrainingArguments(
            output_dir=out_dir,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.trainer_steps + 1,
            **{**TRAINER_ARGUMENTS, **overrides},
            save_strategy="no",
            report_to="none",
            remove_unused_columns=False,
            disable_tqdm=True,
            use_cpu=args.device == "cpu",
            seed=args.seed,
        )
        trainer = Trainer(model, training_args, data_collator=collator, train_dataset=dataset, callbacks=[clock])
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
        return args.batch_size * (len(clock.ends) - 1) / (clock.ends[-1] - clock.ends[0])

    return run


def bench_trainer(config, args: BenchmarkArguments, out_dir: str) -> dict:
    """The Trainer loop against the bare step on one ready real batch and the bare step that collates each batch."""
    dataset = fashion_mnist_slice(args.batch_size * (args.trainer_steps + 2), args.data_dir)
    collator = Collator(config)
    batch = collator([dataset[i] for i in range(args.batch_size)])
    x, y = batch["pixel_values"].to(args.device), batch["labels"].to(args.device)
    model = build_model("this_sdpa", config, args.seed).to(args.device)
    step = train_step_fn(model)
    calls = iter(range(10**9))

    def collate_and_step():  # the next batch's rows, read and collated, then the step
        start = next(calls) * args.batch_size % (len(dataset) - args.batch_size + 1)
        collated = collator([dataset[i] for i in range(start, start + args.batch_size)])
        step(collated["pixel_values"].to(args.device), collated["labels"].to(args.device))

    units = {"bare_step": unit(lambda: step(x, y), args), "bare_step_with_collation": unit(collate_and_step, args)}
    for name, overrides in TRAINER_VARIANTS.items():
        units[name] = trainer_unit(model, dataset, collator, args, out_dir, **overrides)
    rows = summarise(interleave(units, args.repeats), "bare_step")
    for name, overrides in TRAINER_VARIANTS.items():
        rows[name]["training_arguments"] = overrides
    return {"models": rows, "timed_trainer_steps": args.trainer_steps}


def bench_data(config, args: BenchmarkArguments) -> dict:
    dataset = fashion_mnist_slice(args.data_samples, args.data_dir)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=Collator(config))

    def one_pass() -> float:
        start = time.perf_counter()
        count = sum(len(batch["labels"]) for batch in loader)
        return count / (time.perf_counter() - start)

    one_pass()
    return {"models": summarise(interleave({"dataset_processor_collator": one_pass}, args.repeats))}


# ---------------------------------------------------------------------------------------------------- driver
def machine_info(args: BenchmarkArguments) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), None)
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cpu_isa": cpu_isa(),
        "native_bf16": cpu_has_native_bf16(),
        "cpu_count": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def run_benchmark(args: BenchmarkArguments, log: Callable[[str], None] = print) -> dict:
    config = args.config
    result = {"machine": machine_info(args), "arguments": asdict(args), "sections": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vit_d2l_bench_") as out_dir:
        runners = {
            "train": lambda: bench_train(config, args),
            "bf16": lambda: bench_bf16(config, args),
            "compile": lambda: bench_compile(args),
            "trainer": lambda: bench_trainer(config, args, out_dir),
            "data": lambda: bench_data(config, args),
        }
        for name in args.sections:
            log(f"[{time.perf_counter() - start:5.0f} s] {name} ...")
            result["sections"][name] = runners[name]()
    result["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_seconds"] = time.perf_counter() - start
    return result


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if key in row else "-"


def format_report(result: dict) -> str:
    """Markdown: the machine line, then one table per section (img/s = median; ratios = median per-round ratio)."""
    m, a = result["machine"], result["arguments"]
    load = f"load average {m['load_average_at_start'][0]:.2f} at start" if m["load_average_at_start"] else ""
    if m.get("load_average_at_end"):
        load += f", {m['load_average_at_end'][0]:.2f} at end"
    lines = [
        f"CPU: {m['cpu']} (ISA {m['cpu_isa']}, native bf16: {m['native_bf16']}), {m['cpu_count']} CPUs, "
        f"torch threads {m['torch_threads']}" + (f", GPU {m['gpu']}" if m["gpu"] else "") + f"; {load}.",
        f"{a['preset']} {a['config_overrides']}, batch {a['batch_size']}, device {a['device']}; median of "
        f"{a['repeats']} interleaved repeats x {a['steps']} steps; torch {m['torch']}, transformers "
        f"{m['transformers']}. Wall time {result['wall_seconds']:.0f} s.",
    ]
    for name, section in result["sections"].items():
        lines += ["", f"### {name}"]
        if "skipped" in section or "error" in section:
            lines.append(f"skipped: {section.get('skipped') or section['error']}")
            continue
        for title, sub in section.get("presets", {"": section}).items():
            lines += _section_table(title, sub)
    return "\n".join(lines)


def _section_table(title: str, section: dict) -> list[str]:
    if "error" in section:
        return [f"{title}: {section['error']}"]
    rows = section["models"]
    keys = sorted({k for row in rows.values() for k in row if k.startswith("vs_")})
    lines = [f"{title}:" if title else "", "| " + " | ".join(["unit", "img/s", *keys]) + " |"]
    lines.append("|---" * (2 + len(keys)) + "|")
    for name, row in rows.items():
        lines.append("| " + " | ".join([name, f"{row['img_per_s']:.1f}", *(_ratio(row, k) for k in keys)]) + " |")
    if "compile_seconds" in section:
        even = section["break_even_steps"]
        lines.append(
            f"compile {section['compile_seconds']:.0f} s; pays after {even if even else 'never'} steps; over "
            f"{section['run_steps']} steps: {section['run_speedup_incl_compile']:.2f}x incl. compile."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        result = run_benchmark(args, log=lambda message: print(message, file=sys.stderr, flush=True))
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        transformers.logging.set_verbosity(verbosity)
    result["command"] = " ".join(["python", "benchmarks/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    print(format_report(result))
    if args.json_out:
        write_json_atomic(args.json_out, result)
        print(f"\nJSON (every repeat): {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
