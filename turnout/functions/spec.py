"""Loading a folder of functions, validated once at start-up (and by ``turnout config check``).

Every problem is one ``FunctionError`` naming the file and line::

    functions/extract_invoice/user.j2:3: the template uses {{ vendr }}, which input.schema.json
      does not declare -> add it to "properties" or correct the name

What is checked: ``function.yaml`` against :class:`FunctionFile` (unknown keys refused); the
routes each variant and the escalation name exist in turnout.yaml; both JSON schemas compile;
every template parses, uses only declared variables, and renders on every golden input.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from turnout.config import TurnoutConfig
from turnout.functions.checks import FunctionError

FUNCTION_FILE = "function.yaml"
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Params(_Strict):
    """Generation parameters a variant fixes (the caller's are not used: they are the function's)."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: list[str] | None = None


class VariantSpec(_Strict):
    user: str = Field(description="template file of the user message")
    system: str | None = Field(None, description="template file of the system message")
    route: str = Field(description="route alias or engine name (turnout.yaml) that answers")
    weight: float = Field(1.0, ge=0, description="share of traffic, relative to the other variants")
    params: Params = Field(default_factory=lambda: Params.model_validate({}))
    structured: bool = Field(True, description="ask the engine for JSON of the output schema (response_format)")


class CheckSpec(_Strict):
    """A declared check on the answer, no Python: ``regex`` must match, or the value must occur
    in the input variable ``in_input`` (an extraction that copies, not invents). ``field`` is a
    JSON pointer into the answer (``/vendor``); without it, the whole answer text."""

    name: str | None = None
    field: str | None = Field(None, pattern=r"^(/[^/]*)*$")
    regex: str | None = None
    in_input: str | None = None

    @model_validator(mode="after")
    def _one(self) -> CheckSpec:
        if (self.regex is None) == (self.in_input is None):
            raise ValueError("a check needs exactly one of 'regex' or 'in_input'")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return self


class ExperimentSpec(_Strict):
    """How variants share traffic: fixed ``weights``, or a ``bandit`` that moves traffic to the
    variant with the best metric and stops when one is best with ``confidence``."""

    mode: Literal["weights", "bandit"] = "weights"
    metric: Literal["feedback", "golden"] = Field(
        "feedback", description="feedback: POST /v1/feedback satisfaction (thumbs or 1-5 rating); golden: the "
        "pass rate in the saved baseline of `turnout eval function`")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="stop when one variant is best with this probability")
    min_samples: int = Field(10, ge=1, description="feedback (or golden items) each variant needs before a stop")


class FunctionFile(_Strict):
    """The schema of ``function.yaml``."""

    description: str | None = None
    input_schema: str = "input.schema.json"
    output_schema: str | None = None
    checks: list[CheckSpec] = Field(default_factory=list)
    escalate_on: list[Literal["invalid_output"]] = Field(default_factory=list)
    escalate_to: str | None = Field(None, description="route alias or engine for the escalation")
    variants: dict[str, VariantSpec] = Field(min_length=1)
    experiment: ExperimentSpec = Field(default_factory=lambda: ExperimentSpec.model_validate({}))
    golden: str | None = Field(None, description="golden set (JSON lines); default golden.jsonl if present")
    min_pass: float = Field(0.0, ge=0, le=1, description="lowest golden pass rate `turnout eval function` accepts")

    @model_validator(mode="after")
    def _escalation(self) -> FunctionFile:
        if self.escalate_on and not (self.output_schema or self.checks):
            raise ValueError("escalate_on: invalid_output needs an output_schema or checks to judge the output")
        if self.escalate_on and not self.escalate_to:
            raise ValueError("escalate_on needs escalate_to: the route alias or engine that gets the escalation")
        for name in self.variants:
            if not NAME.match(name):
                raise ValueError(f"variant name {name!r}: use 1 to 64 letters, digits, '_' or '-'")
        return self


@dataclass
class Variant:
    name: str
    spec: VariantSpec
    system: Any | None           # compiled jinja2 templates (turnout.functions.render)
    user: Any
    template_hash: str
    sources: dict[str, str]      # file name -> template text (for diffs)


@dataclass
class Function:
    name: str
    folder: Path
    spec: FunctionFile
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    variants: dict[str, Variant]
    golden: list[dict[str, Any]] = field(default_factory=list)
    golden_path: Path | None = None
    _validators: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def checked(self) -> bool:
        return self.output_schema is not None or bool(self.spec.checks)

    @property
    def escalates(self) -> bool:
        return "invalid_output" in self.spec.escalate_on

    def validator(self, which: str) -> Any:
        import jsonschema_rs

        if which not in self._validators:
            schema = self.input_schema if which == "input" else self.output_schema
            self._validators[which] = jsonschema_rs.validator_for(schema) if schema is not None else None
        return self._validators[which]


# ---- line numbers ------------------------------------------------------------------------------
def yaml_line(text: str, loc: tuple[Any, ...]) -> int:
    """The 1-based line of the YAML node at ``loc`` (a pydantic error location), or of its
    deepest existing parent."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return 1
    line = 1 if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if nxt is None:
                key = next((k for k, _ in node.value if getattr(k, "value", None) == str(part)), None)
                return key.start_mark.line + 1 if key is not None else line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def json_line(text: str, path: list[Any]) -> int:
    """The 1-based line where the JSON pointer ``path`` starts (its keys found in order; best effort)."""
    pos = 0
    for part in path:
        if isinstance(part, str):
            m = re.compile(r'"' + re.escape(part) + r'"\s*:').search(text, pos)
            if m is None:
                break
            pos = m.start()
    return text.count("\n", 0, pos) + 1


def _read_json(path: Path) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        raise FunctionError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FunctionError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise FunctionError(f"{path}:1: a JSON Schema is an object")
    return data, text


def _compile_schema(path: Path) -> dict[str, Any]:
    import jsonschema_rs

    schema, text = _read_json(path)
    try:
        jsonschema_rs.meta.validate(schema)
        jsonschema_rs.validator_for(schema)
    except jsonschema_rs.ValidationError as exc:
        first = exc.message
        raise FunctionError(f"{path}:{json_line(text, list(exc.instance_path))}: the schema does not compile: "
                            f"{first} (at {'/'.join(map(str, exc.instance_path)) or 'the top'}) -> fix the schema") \
            from None
    except ValueError as exc:
        raise FunctionError(f"{path}:1: the schema does not compile: {exc} -> fix the schema") from None
    return schema


# ---- loading -----------------------------------------------------------------------------------
def load_function(folder: Path, cfg: TurnoutConfig | None = None) -> Function:
    from turnout.functions import golden as golden_mod
    from turnout.functions import render

    name = folder.name
    if not NAME.match(name):
        raise FunctionError(f"{folder}: a function's folder name is 1 to 64 letters, digits, '_' or '-'")
    path = folder / FUNCTION_FILE
    if not path.is_file():
        raise FunctionError(f"{path}: no such file; each function folder needs one")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise FunctionError(f"{path}:{mark.line + 1 if mark else 1}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise FunctionError(f"{path}:1: the top level must be a mapping with 'variants'")
    try:
        spec = FunctionFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        where = ".".join(map(str, loc)) or "(top level)"
        fix = {"extra_forbidden": "remove it or check its spelling", "missing": "add it"}.get(err["type"], "correct it")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise FunctionError(f"{path}:{yaml_line(text, loc)}: {where}: {err['msg']} -> {fix}{more}") from None
    if cfg is not None:
        known = set(cfg.routes) | set(cfg.engines)
        for vname, v in spec.variants.items():
            if v.route not in known:
                raise FunctionError(f"{path}:{yaml_line(text, ('variants', vname, 'route'))}: variants.{vname}.route: "
                                    f"{v.route!r} is neither a route nor an engine of turnout.yaml "
                                    f"({', '.join(sorted(known))})")
        if spec.escalate_to and spec.escalate_to not in known:
            raise FunctionError(f"{path}:{yaml_line(text, ('escalate_to',))}: escalate_to: {spec.escalate_to!r} is "
                                f"neither a route nor an engine of turnout.yaml ({', '.join(sorted(known))})")
    input_schema = _compile_schema(folder / spec.input_schema)
    output_schema = _compile_schema(folder / spec.output_schema) if spec.output_schema else None
    declared = set((input_schema.get("properties") or {}).keys())
    for i, check in enumerate(spec.checks):
        if check.in_input is not None and check.in_input not in declared:
            raise FunctionError(f"{path}:{yaml_line(text, ('checks', i, 'in_input'))}: checks[{i}].in_input names "
                                f"{check.in_input!r}, which {spec.input_schema} does not declare")
    env = render.environment()
    variants: dict[str, Variant] = {}
    for vname, v in spec.variants.items():
        sources: dict[str, str] = {}
        compiled: dict[str, Any] = {}
        for role, file in (("system", v.system), ("user", v.user)):
            if file is None:
                continue
            tpath = folder / file
            if not tpath.is_file():
                raise FunctionError(f"{path}:{yaml_line(text, ('variants', vname, role))}: variants.{vname}.{role}: "
                                    f"no template file {file!r} in {folder}")
            source = tpath.read_text(encoding="utf-8")
            compiled[role] = render.compile_template(env, tpath, source, declared, spec.input_schema)
            sources[file] = source
        variants[vname] = Variant(vname, v, compiled.get("system"), compiled["user"],
                                  render.template_hash(v.system and sources[v.system], sources[v.user]), sources)
    fn = Function(name, folder, spec, input_schema, output_schema, variants)
    gpath = folder / spec.golden if spec.golden else folder / "golden.jsonl"
    if spec.golden and not gpath.is_file():
        raise FunctionError(f"{path}:{yaml_line(text, ('golden',))}: golden: no file {spec.golden!r} in {folder}")
    if gpath.is_file():
        fn.golden, fn.golden_path = golden_mod.load(gpath, fn), gpath
        for item in fn.golden:  # every variant renders every golden input
            for variant in variants.values():
                try:
                    render.messages(fn, variant, item["variables"])
                except render.RenderError as exc:
                    raise FunctionError(f"{gpath}:{item['line']}: variant {variant.name!r} does not render on this "
                                        f"input: {exc}") from None
    return fn


def load_functions(path: str | Path, cfg: TurnoutConfig | None = None) -> dict[str, Function]:
    """Every function under ``path`` (each sub-folder with a function.yaml), validated."""
    root = Path(path)
    if not root.is_dir():
        raise FunctionError(f"{root}: functions.path is not a folder")
    out: dict[str, Function] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        out[folder.name] = load_function(folder, cfg)
    return out
