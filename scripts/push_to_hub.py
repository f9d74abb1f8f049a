"""Write the model card of a trained folder and push the folder to the Hugging Face Hub.

    # look first: write exactly the folder that would be uploaded (README.md = the generated card)
    python scripts/push_to_hub.py outputs/vit_d2l_fashion_mnist --repo_id USER/vit-d2l-fashion-mnist \\
        --dry_run /tmp/vit-d2l-upload

    # upload (needs `hf auth login` or HF_TOKEN); optionally the stock-transformers export to a second repository
    # and a Gradio Space running scripts/demo.py on the pushed commit
    python scripts/push_to_hub.py outputs/vit_d2l_fashion_mnist --repo_id USER/vit-d2l-fashion-mnist \\
        --also_stock_vit_repo USER/vit-d2l-fashion-mnist-stock-vit --space_repo_id USER/vit-d2l-demo

The folder is the output of scripts/train.py, evaluated with scripts/evaluate.py. It is only read: the card goes
into a staged copy. Before anything is uploaded, the script checks that the folder is complete and loadable
(weights, config with a full auto_map, the three code files, preprocessor config) and that a token exists and the
Hub answers; offline it stops at once with a clear message.
"""

import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

try:
    import hf_vit_d2l  # noqa: F401
except ImportError:  # run from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_vit_d2l.hub import HubPushError, push_to_hub  # noqa: E402


@dataclass
class PushArguments:
    folder: str = field(metadata={"help": "Trained model folder (output of scripts/train.py)."})
    repo_id: str = field(metadata={"help": "Hub repository, USER/NAME."})
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    dry_run: str | None = field(
        default=None, metadata={"help": "Write the folder that would be uploaded to this new folder; upload nothing."}
    )
    also_stock_vit_repo: str | None = field(
        default=None,
        metadata={"help": "Also upload the stock transformers ViT export (hf_vit_d2l.to_transformers_vit) here."},
    )

    space_repo_id: str | None = field(
        default=None,
        metadata={
            "help": "Also upload a Gradio Space (USER/NAME) running the demo on the pushed commit; with "
            "--dry_run, its folder is written to DIR-space."
        },
    )

    def __post_init__(self):
        if not Path(self.folder).is_dir():
            raise ValueError(f"{self.folder}: no such folder. Pass the output folder of scripts/train.py.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The folder is positional on the command line: `push_to_hub.py FOLDER --repo_id ...`.
    if argv and not argv[0].startswith("-"):
        argv = ["--folder", argv[0], *argv[1:]]
    try:
        (args,) = HfArgumentParser(PushArguments).parse_args_into_dataclasses(args=argv)
        result = push_to_hub(
            args.folder,
            args.repo_id,
            args.private,
            stock_vit_repo_id=args.also_stock_vit_repo,
            dry_run_dir=args.dry_run,
        )
    except (HubPushError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"Dry run: wrote the folder that would be uploaded to {result['staged']}")
        if result.get("stock_vit_staged"):
            print(f"Dry run: wrote the stock-ViT export to {result['stock_vit_staged']}")
    else:
        print(f"Uploaded to {result['url']}")
        if result.get("stock_vit_url"):
            print(f"Uploaded the stock-ViT export to {result['stock_vit_url']}")
    if args.space_repo_id:
        push_space(args, result)
    return 0


def push_space(args: PushArguments, result: dict) -> None:
    """The demo as a Gradio Space, loading the model at the commit just pushed (`main` in a dry run)."""
    spec = importlib.util.spec_from_file_location("demo", Path(__file__).with_name("demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    if args.dry_run:
        space = demo.write_space_folder(args.dry_run.rstrip("/") + "-space", args.repo_id, "main")
        print(f"Dry run: wrote the Space folder to {space}")
        return
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.space_repo_id, repo_type="space", space_sdk="gradio", exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        space = demo.write_space_folder(os.path.join(tmp, "space"), args.repo_id, result["commit"])
        api.upload_folder(folder_path=space, repo_id=args.space_repo_id, repo_type="space")
    print(f"Uploaded the Space to https://huggingface.co/spaces/{args.space_repo_id}")


if __name__ == "__main__":
    sys.exit(main())
