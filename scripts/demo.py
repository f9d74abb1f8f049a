#!/usr/bin/env python
"""Try a saved model in the browser: a Gradio app on http://127.0.0.1:7860.

    python scripts/demo.py --model runs/quick
    python scripts/demo.py --model USER/NAME --trust_remote_code --port 7861

The logic is `hf_vit_d2l.demo.main` (also `vit-d2l-demo` and `python -m hf_vit_d2l.demo`).
"""

from hf_vit_d2l.demo import main

if __name__ == "__main__":
    main()
