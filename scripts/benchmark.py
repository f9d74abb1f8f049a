#!/usr/bin/env python
"""

Benchmark this model against stock transformers' ViT and the book's module, plus data, Trainer and bf16 paths.

One process, one run; prints a Markdown table and writes JSON. The README's "Performance" table came from:

    python scripts/benchmark.py --json_out benchmark_cpu.json

Other uses:

    python scripts/benchmark.py --dtype bf16                       # the four main models under bf16 autocast
    python scripts/benchmark.py --device cuda --batch_size 512 --torch_compile
    python scripts/benchmark.py --config_overrides '{"image_size": 28, "patch_size": 7}' --skip trainer
    python scripts/benchmark.py --skip data trainer d2l_book --repeats 9

The benchmark runs in one process and does not use `accelerate launch` (it times a single device).
"""

import sys
from pathlib import Path

try:
    import hf_vit_d2l  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_vit_d2l.benchmark import (
    TRAIN_MODELS,
    BenchmarkError,
    BenchmarkOptions,
    format_table,
    run_benchmark,
    write_json,
)


@dataclass
class BenchmarkArguments:
    batch_size: int = field(default=128, metadata={"help": "Images per training/inference batch."})
    preset: str = field(default="vit_d2l_fashion_mnist", metadata={"help": "Model preset (hf_vit_d2l.PRESETS)."})
    config_overrides: str = field(default="{}", metadata={"help": "JSON object of config fields to override."})
    dtype: str = field(default="fp32", metadata={"help": "fp32, or bf16 (autocast) for the four main models."})
    torch_compile: bool = field(default=False, metadata={"help": "Wrap each model in torch.compile."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    steps: int = field(default=2, metadata={"help": "Training steps per timed repeat."})
    repeats: int = field(default=5, metadata={"help": "Timed repeats per model (median reported), interleaved."})
    warmup: int = field(default=1, metadata={"help": "Untimed warm-up repeats per model."})
    trainer_steps: int = field(default=10, metadata={"help": "Timed steps of the full Trainer loop."})
    loss_curve_steps: int = field(default=40, metadata={"help": "Steps of the fp32 vs bf16 loss-curve check."})
    data_samples: int = field(default=2048, metadata={"help": "Images pushed through the data pipeline."})
    models: list[str] = field(default_factory=lambda: list(TRAIN_MODELS), metadata={"help": "Models to time."})
    skip: list[str] = field(
        default_factory=list,
        metadata={"help": "Sections (matmul train inference data trainer loss_curve) or model names."},
    )
    data_dir: str = field(default=None, metadata={"help": "Folder with the Fashion-MNIST IDX .gz files."})
    matmul_size: int = field(default=2048, metadata={"help": "Side of the square matmuls timed for the peak."})
    json_out: str = field(default="benchmark_results.json", metadata={"help": "Where to write the JSON result."})
    seed: int = field(default=0, metadata={"help": "Seed for weights and inputs."})


def main(argv=None) -> int:
    (args,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses(args=argv)
    try:
        overrides = json.loads(args.config_overrides)
    except json.JSONDecodeError as error:
        print(
            f"error: --config_overrides is not valid JSON ({error}); e.g. '{{\"hidden_size\": 64}}'", file=sys.stderr
        )
        return 2
    options = BenchmarkOptions(
        batch_size=args.batch_size,
        preset=args.preset,
        config_overrides=overrides,
        dtype=args.dtype,
        torch_compile=args.torch_compile,
        device=args.device,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        trainer_steps=args.trainer_steps,
        data_samples=args.data_samples,
        loss_curve_steps=args.loss_curve_steps,
        models=args.models,
        skip=args.skip,
        data_dir=args.data_dir,
        seed=args.seed,
        matmul_size=args.matmul_size,
    )
    try:
        result = run_benchmark(options, log=lambda message: print(message, file=sys.stderr, flush=True))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    result["command"] = " ".join(["python", "scripts/benchmark.py"] + (sys.argv[1:] if argv is None else list(argv)))
    print(format_table(result))
    write_json(result, args.json_out)
    print(f"\nJSON written to {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
