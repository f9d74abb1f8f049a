#!/usr/bin/env python
"""Try a saved model in the browser: a Gradio app on http://127.0.0.1:7860 (logic in `hf_vit_d2l.demo`).

pip install -e ".[demo]"
python scripts/demo.py --model runs/quick
python scripts/demo.py --model USER/NAME --trust_remote_code --port 7861   # a pushed model, by Hub id
"""

import argparse
import importlib.util
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="A folder saved by scripts/train.py, or a Hub id.")
    parser.add_argument("--port", type=int, default=None, help="Port on 127.0.0.1 (default: 7860 or the next free).")
    parser.add_argument("--top_k", type=int, default=5, help="How many labels to show.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Run the code shipped with a Hub model.")
    args = parser.parse_args()
    if importlib.util.find_spec("gradio") is None:
        sys.exit('error: the demo needs gradio: pip install -e ".[demo]"')
    from hf_vit_d2l.demo import main as serve

    try:
        serve(args.model, port=args.port, trust_remote_code=args.trust_remote_code, top_k=args.top_k)
    except ValueError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
