"""What the test suite's forkserver imports once (``turnout.testing.procs.preload_forkserver``): the
gateway's command line, app and engines, and the stand-in servers, with the secrets catalogue that every
gateway's recorder builds at start. A server forked from it starts without paying for these again."""

import llama_cpp  # noqa: F401
import uvicorn  # noqa: F401
import uvicorn.lifespan.on  # noqa: F401
import uvicorn.loops.auto  # noqa: F401
import uvicorn.loops.uvloop  # noqa: F401
import uvicorn.protocols.http.auto  # noqa: F401
import uvicorn.protocols.websockets.auto  # noqa: F401

import turnout.cli.main  # noqa: F401
import turnout.cli.serve  # noqa: F401
import turnout.embedding.embeddings  # noqa: F401
import turnout.engines.anthropic  # noqa: F401
import turnout.engines.llamacpp  # noqa: F401
import turnout.engines.llamacpp_prefix  # noqa: F401
import turnout.engines.openai_http  # noqa: F401
import turnout.ledger.capture_writer  # noqa: F401
import turnout.ledger.sqlite  # noqa: F401
import turnout.ledger.writer  # noqa: F401
import turnout.model_cache  # noqa: F401
import turnout.preflight  # noqa: F401
import turnout.server.app  # noqa: F401
import turnout.testing.anthropic_fake  # noqa: F401
import turnout.testing.upstream  # noqa: F401
from turnout.guards.scrub import scrub

scrub("")
