"""Meta-evaluation: how well a judge agrees with people. Pure: no Ray or torch.

Read in this order: ``benchmarks`` (labelled items in one canonical format, and their adapters),
``judges`` (recorded verdicts, or prompts for an engine and parsing of its outputs), ``metrics``
(scipy / scikit-learn agreement measures), ``stats`` (bootstrap intervals, chance levels, the
normalised overall score, relative gaps), ``report`` (from predictions to every number),
``markdown`` and ``plots`` (how a report is shown), ``compare`` (two reports side by side). The
stage that runs judges is ``themis.stages.evaluate``.
"""
