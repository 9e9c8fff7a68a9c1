"""Functions: prompt templates as code, called through the OpenAI API as ``model: "fn:NAME"``.

A function is a folder in the user's repository (``functions.path`` in turnout.yaml)::

    functions/extract_invoice/
      function.yaml        variants (template x route x parameters, with weights), checks,
                           escalation, experiment
      *.j2                 Jinja2 templates (sandboxed, StrictUndefined)
      input.schema.json    JSON Schema of the template variables
      output.schema.json   optional: the answer must be JSON of this shape
      golden.jsonl         optional: the regression set (``turnout eval function``)

Modules, one job each: ``spec`` loads and validates a folder (errors name the file and line),
``render`` turns variables into messages, ``checks`` judges an answer, ``experiment`` assigns a
variant (weights or a bandit, sticky per episode), ``runner`` calls the gateway (retry, then
escalate on invalid output), ``stats`` reads the ledger for reports. Functions are a client of
the pipeline: they call ``Gateway.chat`` / ``Gateway.stream`` like the HTTP endpoint does.
"""
