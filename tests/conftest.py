"""Tests never download: the hub is switched off before anything imports huggingface_hub.

The notebooks' kernels, started by nbval, inherit this environment too.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
