"""The judge workbench: ``themis view RUN_ROOT`` shows a run in the browser.

- ``data``: the data layer (pure: no Ray or torch; reads the run through ``themis.storage``): one
  JSON-able document per section, the tables (``tables``) and comparisons; ``run``,
  ``curation``, ``training``, ``evaluation`` and ``events`` build its sections.
- ``server``: a stdlib HTTP server on loopback serving the page and the documents as a JSON API;
  ``export``: the same page as static files that open from disk.
- ``static/``: the page (plain JavaScript, no build step, no CDN; see ``static/README.md``).

May import: ``themis.storage``, ``themis.config``, and the pure core (``evaluation``, ``judging``,
``filters``, ``train_metrics``); never Ray, torch, DeepSpeed or vLLM.
"""
