"""Templates: a sandboxed Jinja2 with ``StrictUndefined``, checked against the input schema,
and the template hash that is a variant's version."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnout.functions.spec import Function, Variant


class RenderError(ValueError):
    """The variables do not fit the input schema, or a template failed on them."""


def environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Immutable: a template cannot change the caller's lists and dicts; no autoescape: prompts
    # are text, not HTML; keep_trailing_newline: what is in the file is what is sent.
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def compile_template(env: Any, path: Path, source: str, declared: set[str], schema_file: str) -> Any:
    """The compiled template; ``FunctionError`` with the line for a syntax error or a variable
    the input schema does not declare."""
    from jinja2 import TemplateSyntaxError, meta, nodes

    from turnout.functions.checks import FunctionError

    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        raise FunctionError(f"{path}:{exc.lineno}: template syntax error: {exc.message}") from None
    unknown = sorted(meta.find_undeclared_variables(ast) - declared)
    if unknown:
        first = unknown[0]
        line = min((n.lineno for n in ast.find_all(nodes.Name) if n.name == first and n.ctx == "load"), default=1)
        raise FunctionError(f"{path}:{line}: the template uses {{{{ {first} }}}}, which {schema_file} does not declare "
                            f"-> add it to \"properties\" or correct the name"
                            + (f" (also undeclared: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""))
    return env.from_string(source)


def template_hash(system: str | None, user: str) -> str:
    """A variant's template version: sha256 of its system and user templates, 16 hex digits."""
    h = hashlib.sha256()
    h.update(b"system\x00" + (system or "").encode() + b"\x00user\x00" + user.encode())
    return h.hexdigest()[:16]


def undeclared(schema: dict[str, Any], variables: dict[str, Any]) -> list[str]:
    """The variables the input schema does not declare in ``properties``, unless the schema
    allows others explicitly (``additionalProperties`` given and not false, or
    ``patternProperties``: its own validation then decides). JSON Schema lets extras through
    when ``additionalProperties`` is absent; a function refuses them, since no template uses
    them (the loader checks) and a name like ``self`` is no business of the renderer."""
    extra = schema.get("additionalProperties", False)
    if (extra is not False and extra is not None) or schema.get("patternProperties"):
        return []
    declared = schema.get("properties") or {}
    return [k for k in variables if k not in declared]


def check_input(fn: Function, variables: Any) -> None:
    if not isinstance(variables, dict):
        raise RenderError("the variables must be a JSON object")
    unknown = undeclared(fn.input_schema, variables)
    if unknown:
        names = [repr(k[:64]) for k in unknown[:4]]
        raise RenderError(f"variable {names[0]} is not declared in the input schema's properties"
                          + (f" (also undeclared: {', '.join(names[1:])}{', ...' if len(unknown) > 4 else ''})"
                             if len(unknown) > 1 else "")
                          + "; set \"additionalProperties\" in the schema to accept others")
    errors = list(fn.validator("input").iter_errors(variables))
    if errors:
        e = errors[0]
        where = "/" + "/".join(map(str, e.instance_path)) if e.instance_path else "the variables"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise RenderError(f"{where}: {e.message}{more}")


class RenderTooLarge(RenderError):
    """The variables, or the prompt they render to, are over their size limit."""


# values (every string, number, list item, object member, at any depth) a call's variables may hold:
# a template loops over them, so their count bounds the rendering's work (issue 23, H1: a 200,000-item
# list kept a guard thread busy for half an hour)
MAX_VARIABLE_ITEMS = 10_000


def count_items(value: Any, limit: int = MAX_VARIABLE_ITEMS) -> int:
    """The values in ``value``, counting stops past ``limit``."""
    n, stack = 0, [value]
    while stack and n <= limit:
        v = stack.pop()
        n += 1
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return n


def _render(template: Any, variables: dict[str, Any], max_chars: int | None) -> str:
    """The template's text, stopped as soon as it passes ``max_chars``."""
    # a mapping, not **keywords: a variable named "self" must not collide with render's own parameter
    if max_chars is None:
        return str(template.render(variables))
    out: list[str] = []
    size = 0
    for piece in template.generate(variables):
        size += len(piece)
        if size > max_chars:
            raise RenderTooLarge(f"the rendered prompt passes {max_chars:,} characters (max_input_chars)")
        out.append(piece)
    return "".join(out)


def messages(fn: Function, variant: Variant, variables: Any, max_chars: int | None = None) -> list[dict[str, str]]:
    """The chat messages of ``variant`` for ``variables`` (checked against the input schema
    first); ``max_chars`` bounds the variables' values and the rendered prompt (RenderTooLarge)."""
    from jinja2 import TemplateError

    if max_chars is not None:
        n = count_items(variables)
        if n > MAX_VARIABLE_ITEMS:
            raise RenderTooLarge(f"the variables hold more than {MAX_VARIABLE_ITEMS:,} values")
    check_input(fn, variables)
    out = []
    try:
        if variant.system is not None:
            out.append({"role": "system", "content": _render(variant.system, variables, max_chars)})
        left = max_chars if max_chars is None or not out else max_chars - len(out[0]["content"])
        out.append({"role": "user", "content": _render(variant.user, variables, left)})
    except TemplateError as exc:
        raise RenderError(f"template error: {exc}") from None
    return out
