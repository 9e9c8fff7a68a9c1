"""The licensing stance: which model licenses the gateway may run (``policy.licenses``).

License ids are SPDX identifiers where one exists (``Apache-2.0``, ``MIT``, ``GPL-3.0-only``;
matched without regard to case, so ``apache-2.0`` is ``Apache-2.0``), else a name of your own
(``llama2``, ``LicenseRef-OpenAI-Terms``). An engine's ``license`` may be an SPDX expression:
``MIT OR Apache-2.0`` is allowed if either is, ``MIT AND CC-BY-4.0`` only if both are.
Parsing uses ``license-expression`` (nexB's SPDX library, the license list included).

    allow   if given, every license an engine needs must be in it; an engine that declares
            no license is refused (declare one, e.g. ``LicenseRef-OpenAI-Terms`` for an API)
    deny    a license here is refused, whatever ``allow`` says
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _licensing() -> Any:
    from license_expression import get_spdx_licensing  # type: ignore[import-untyped]

    return get_spdx_licensing()


def parse(expression: str) -> Any:
    """The parsed expression (ids normalised to their SPDX spelling); ValueError if it does not parse."""
    try:
        parsed = _licensing().parse(expression, validate=False)
    except Exception as exc:  # ExpressionError and friends
        raise ValueError(f"{expression!r} is not a license id or expression ({exc})") from exc
    if parsed is None:
        raise ValueError(f"{expression!r} is empty")
    return parsed


def canonical(license_id: str) -> str:
    """``apache-2.0`` -> ``Apache-2.0``; ids SPDX does not know keep their own spelling."""
    return str(parse(license_id).render("{symbol.key}"))


def _allowed(node: Any, ok: Any) -> bool:
    from license_expression import AND, OR, LicenseSymbol, LicenseWithExceptionSymbol

    if isinstance(node, LicenseWithExceptionSymbol):
        return bool(ok(node.license_symbol.key)) and bool(ok(node.exception_symbol.key))
    if isinstance(node, LicenseSymbol):
        return bool(ok(node.key))
    if isinstance(node, OR):
        return any(_allowed(a, ok) for a in node.args)
    if isinstance(node, AND):
        return all(_allowed(a, ok) for a in node.args)
    return False


def refusal(license: str | None, allow: Sequence[str] | None, deny: Sequence[str]) -> str | None:
    """Why an engine under ``license`` may not run under this policy, or None if it may."""
    if allow is None and not deny:
        return None
    if not license:
        if allow is None:
            return None
        return "declares no license and policy.licenses.allow is set: declare its license"
    allowed = None if allow is None else {canonical(a).lower() for a in allow}
    denied = {canonical(d).lower() for d in deny}

    def ok(key: str) -> bool:
        k = key.lower()
        return k not in denied and (allowed is None or k in allowed)

    if _allowed(parse(license), ok):
        return None
    keys = [str(k) for k in _licensing().license_keys(parse(license))]
    why = [f"{k} is denied" if k.lower() in denied else f"{k} is not in policy.licenses.allow"
           for k in keys if not ok(k)]
    return f"license {license} is not allowed: {'; '.join(why)}"
