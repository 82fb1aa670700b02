"""The judge, pure: scenarios, scales, prompts, parsing, the verdict and its vocabulary
(``verdict``), and the one judge call (``call``: render, request, read the verdict)."""
