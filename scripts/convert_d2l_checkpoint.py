"""Convert a checkpoint of the book's own `ViT` module into a Hugging Face model folder.

Save the book model with `torch.save(model.state_dict(), "vit_d2l.pt")` (a dict holding it under "state_dict" or
"model" works too), then:

    python scripts/convert_d2l_checkpoint.py --checkpoint vit_d2l.pt --output_dir vit-d2l-hf
    python scripts/convert_d2l_checkpoint.py --checkpoint vit_d2l.pt --output_dir vit-d2l-hf --num_heads 4
    python scripts/convert_d2l_checkpoint.py --checkpoint vit_d2l.pt --output_dir vit-d2l-hf \\
        --config_overrides "emb_dropout=0.1,blk_dropout=0.1"
    python scripts/convert_d2l_checkpoint.py --checkpoint vit_d2l.pt --output_dir vit-stock --to_transformers

The first three write a `ViTD2LForImageClassification` folder (model.safetensors, config.json with a full auto_map,
the code files, preprocessor_config.json) that loads with `AutoModelForImageClassification.from_pretrained(folder,
trust_remote_code=True)`. `--to_transformers` writes stock `transformers.ViTForImageClassification` instead (no
remote code; see `hf_vit_d2l.to_transformers_vit` for what stock ViT cannot express in training).
The file is read with `torch.load(weights_only=True)`: pickled modules are refused.
"""

import sys
from pathlib import Path

try:
    import hf_vit_d2l  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_vit_d2l.convert import CheckpointConversionError, convert_d2l_checkpoint
from hf_vit_d2l.presets import parse_config_overrides


@dataclass
class ConvertArguments:
    checkpoint: str = field(metadata={"help": "Path of the book model's state dict (.pt/.pth, saved by torch.save)."})
    output_dir: str = field(metadata={"help": "Folder to write the converted model and image processor into."})
    num_heads: int | None = field(
        default=None,
        metadata={"help": "Attention heads (cannot be read from the weights; default: the book's 8)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated key=value config settings, book or HF names: 'num_heads=4,emb_dropout=0.2'."
        },
    )
    to_transformers: bool = field(
        default=False,
        metadata={"help": "Write stock transformers ViTForImageClassification (loads without remote code)."},
    )

    def __post_init__(self):
        self.overrides = parse_config_overrides(self.config_overrides)
        if self.num_heads is not None:
            if {"num_heads", "num_attention_heads"} & set(self.overrides):
                raise ValueError("Give the number of heads once: --num_heads or --config_overrides, not both.")
            self.overrides["num_attention_heads"] = self.num_heads


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(ConvertArguments).parse_args_into_dataclasses(args=argv)
        folder = convert_d2l_checkpoint(
            args.checkpoint, args.output_dir, config_overrides=args.overrides, to_transformers=args.to_transformers
        )
    except (FileNotFoundError, CheckpointConversionError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    kind = "stock transformers ViTForImageClassification" if args.to_transformers else "ViTD2LForImageClassification"
    print(f"Wrote {kind} to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
