"""OpenTelemetry tracing: one span per request and a child span per pipeline step, with
GenAI semantic-convention attributes on engine calls. The exporter is configured in
turnout.yaml (``tracing.exporter``: none, console or otlp). With ``none`` (and no exporter
given by a test) no tracer is made: no spans, and no trace id in the ledger or the
``x-turnout-trace-id`` header.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

P = ParamSpec("P")
T = TypeVar("T")
TRACER = "turnout"


def make_provider(exporter: str, endpoint: str | None = None, extra: SpanExporter | None = None) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "turnout"}))
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()))
    if extra is not None:  # tests: an in-memory exporter
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(extra))
    return provider


def step(name: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Run an async pipeline step inside a child span named ``turnout.<name>``."""

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            tracer = getattr(args[0], "tracer", None)
            if tracer is None:
                return await fn(*args, **kwargs)
            with tracer.start_as_current_span(f"turnout.{name}"):
                return await fn(*args, **kwargs)

        return inner

    return wrap


def genai_attributes(engine: Any, usage: Any = None, finish: str | None = None,
                     operation: str = "chat") -> dict[str, Any]:
    """OpenTelemetry GenAI semantic-convention attributes for one engine call."""
    info = engine.info
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.system": {"openai": "openai", "anthropic": "anthropic"}.get(info.dialect, info.dialect),
        "gen_ai.request.model": info.model,
        "turnout.engine": info.name,
        "turnout.locality": info.locality,
    }
    if usage is not None:
        attrs["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = usage.completion_tokens
    if finish:
        attrs["gen_ai.response.finish_reasons"] = [finish]
    return attrs


def trace_id_of(span: trace.Span) -> str | None:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def start_request(tracer: Any, parent: Any, attributes: dict[str, Any]) -> tuple[Any, str | None]:
    """The request's root span (continuing the client's trace context ``parent``) and its
    trace id; (None, None) when tracing is off."""
    if tracer is None:
        return None, None
    span = tracer.start_span("turnout.request", context=parent, attributes=attributes)
    return span, trace_id_of(span)


def within(span: Any) -> contextlib.AbstractContextManager[Any]:
    """Make ``span`` current (its steps and engine calls become its children); a no-op without one."""
    return trace.use_span(span, end_on_exit=False) if span is not None else contextlib.nullcontext()


def end_request(span: Any, attributes: dict[str, Any]) -> None:
    if span is not None:
        span.set_attributes(attributes)
        span.end()
