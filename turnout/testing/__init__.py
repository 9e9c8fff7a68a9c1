"""Test support: loopback upstream servers that speak provider wire formats, with fault injection.

* :mod:`turnout.testing.upstream` -- OpenAI Chat Completions / embeddings / models.
* :mod:`turnout.testing.anthropic_fake` -- a fake of Anthropic's Messages API.
* :mod:`turnout.testing.faults` -- scenarios and the ``/__control`` API shared by both.
* :mod:`turnout.testing.procs` -- start a server module as a subprocess and wait until it listens.

See ``docs/fault-scenarios.md``.  Nothing here is imported by the gateway itself.
"""
