"""Sentence embeddings (MiniLM in numpy or ONNX Runtime), used by routing, the cache,
retrieval and the ``minilm`` engine. Low level: imports nothing above turnout.weights and
turnout.model_cache."""
