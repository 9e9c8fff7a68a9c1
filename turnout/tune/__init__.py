"""`turnout tune`: LoRA adapters for the embedded engine from a chat dataset (the ``tune`` extra).

Only the CLI imports this package; its modules import torch, transformers and peft lazily."""
