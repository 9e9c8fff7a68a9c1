"""The optional Qwen2.5-Coder-0.5B model: assembled from its six PyPI parts only when the result
is the published file (size and sha256), refused otherwise, and listed by the model registry
with its provenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from turnout.config import parse_config
from turnout.engines import qwen_coder
from turnout.registry import describe


def test_parts_that_do_not_make_the_published_file_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_CACHE_DIR", str(tmp_path / "cache"))
    a, b = tmp_path / "part01.bin", tmp_path / "part02.bin"
    a.write_bytes(b"GGUF" + bytes(1000))
    b.write_bytes(bytes(500))
    monkeypatch.setattr(qwen_coder, "parts", lambda: [("p1==0.9.0", a), ("p2==0.9.0", b)])
    with pytest.raises(qwen_coder.WeightsRefused, match="1504 bytes .* refused"):
        qwen_coder.qwen_coder_gguf()
    models = tmp_path / "cache" / "models"
    assert not (models / qwen_coder.FILENAME).exists() and not any(models.glob("*.gguf"))


def test_a_missing_part_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qwen_coder, "PACKAGES", ("turnout-no-such-part-for-this-test",))
    with pytest.raises(FileNotFoundError, match=r"pip install 'turnout\[qwen\]'"):
        qwen_coder.parts()


def test_installed_model_is_the_published_file_and_the_registry_says_where_it_came_from() -> None:
    try:
        sources = qwen_coder.parts()
    except FileNotFoundError as exc:
        pytest.skip(f"Qwen2.5-Coder-0.5B is not installed ({exc})")
    assert [s.split("==")[0] for s, _ in sources] == list(qwen_coder.PACKAGES)
    assert sum(p.stat().st_size for _, p in sources) == qwen_coder.SIZE
    path = qwen_coder.qwen_coder_gguf()
    assert path.stat().st_size == qwen_coder.SIZE
    assert path.with_name(path.name + ".sha256").read_text().strip() == qwen_coder.SHA256
    cfg = parse_config({"engines": {"q": {"dialect": "llamacpp", "packaged": "qwen2.5-coder-0.5b",
                                          "sha256": qwen_coder.SHA256}}})
    assert cfg.engines["q"].model_name == "qwen2.5-coder-0.5b-instruct"  # type: ignore[union-attr]
    rec = next(r for r in describe(cfg) if r.engine == "q")
    assert rec.status == "ok" and rec.sha256 == qwen_coder.SHA256 and rec.license == "apache-2.0"
    assert rec.source is not None and "Qwen/Qwen2.5-Coder-0.5B-Instruct" in rec.source
    assert all(f"{name}==" in rec.source for name in qwen_coder.PACKAGES)
