"""The shared vector store over HTTP (turnout's own endpoints, not OpenAI's):

    POST   /v1/turnout/collections/{name}/documents  {"documents": [{"id", "text", "metadata"?}]}
    POST   /v1/turnout/collections/{name}/search     {"query", "k"?}
    GET    /v1/turnout/collections/{name}            document and chunk counts
    DELETE /v1/turnout/collections/{name}[/documents/{id}]

A document sent again under the same id replaces the old one (within one request too: the last wins).
These endpoints need a ``user`` key (``turnout.server.authz``); a key restricted to routes needs
``documents`` among them. Collections belong to the caller's tenant: two tenants may each have
an ``hr`` collection and never see each other's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from turnout.errors import InvalidRequest, NotFound
from turnout.retrieval import NAME
from turnout.server.authz import principal
from turnout.server.body import read_json, validate

MAX_DOCUMENTS = 256


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=256)
    text: str = Field(min_length=1, max_length=1_000_000)
    metadata: dict[str, Any] | None = None


class AddBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[Document] = Field(min_length=1, max_length=MAX_DOCUMENTS)


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=10_000)
    k: int = Field(4, ge=1, le=50)


async def _store(request: Request) -> tuple[Any, str, str]:
    """The vector store, the collection name and the caller's tenant (who owns it)."""
    gw = request.app.state.gateway
    if gw.store is None:
        raise InvalidRequest("retrieval is off (retrieval.enabled: false, or the MiniLM weights are not installed)",
                             code="retrieval_disabled")
    name = request.path_params["name"]
    if not NAME.match(name):
        raise InvalidRequest(f"collection names are 1-64 letters, digits, '_', '.' or '-'; got {name!r}",
                             param="name", code="invalid_collection")
    return gw.store, name, principal(request).tenant


async def add_documents(request: Request) -> Response:
    store, name, tenant = await _store(request)
    body = validate(AddBody, await read_json(request, request.app.state.gateway.cfg.server.max_body_bytes))
    latest = {d.id: d.model_dump() for d in body.documents}  # an id sent twice: the last one wins, as across requests
    added = await asyncio.to_thread(store.add, name, list(latest.values()), tenant=tenant)
    return JSONResponse({"object": "collection.documents", "collection": name, "chunks": added,
                         **await asyncio.to_thread(store.stats, name, tenant=tenant)})


async def search(request: Request) -> Response:
    store, name, tenant = await _store(request)
    body = validate(SearchBody, await read_json(request, 64 * 1024))
    found = await asyncio.to_thread(store.search, name, body.query, body.k, tenant=tenant)
    return JSONResponse({"object": "list", "collection": name, "data": [
        {"document": p.doc_id, "chunk": p.chunk, "score": round(p.score, 4), "text": p.text, "metadata": p.metadata}
        for p in found]})


async def collection(request: Request) -> Response:
    store, name, tenant = await _store(request)
    return JSONResponse({"object": "collection", "collection": name,
                         **await asyncio.to_thread(store.stats, name, tenant=tenant)})


async def delete(request: Request) -> Response:
    store, name, tenant = await _store(request)
    doc = request.path_params.get("doc_id")
    removed = await asyncio.to_thread(store.delete, name, doc, tenant=tenant)
    if doc is not None and not removed:
        raise NotFound(f"no document {doc!r} in collection {name!r}", param="doc_id", code="document_not_found")
    return JSONResponse({"object": "collection.deleted", "collection": name, "document": doc, "chunks": removed})
