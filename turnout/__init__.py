"""turnout: a hybrid LLM gateway.

Each request walks one pipeline (``turnout.pipeline``) and is answered by a local
open-weight engine or a remote frontier engine, chosen by policy, confidence and cost.
"""

__version__ = "0.1.0"
