"""The judge endpoint.

Pure (no Ray, torch or FastAPI): ``models`` (request and response models), ``errors`` (OpenAI-shaped
refusals), ``api`` (``/v1/judge``: request -> judge call -> verdict -> answer), ``chat`` (the
OpenAI-compatible routes' logic), ``options`` (replica sizing and Serve's deployment options),
``guard`` (keys, body limit, admission), ``promotion`` (the gate before serving). The Ray shell:
``replica`` (the engine inside a replica), ``batcher``, ``metrics``, ``deployment`` (``JudgeServer``
and its routes) and ``app`` (the application builders manifests import).
"""
