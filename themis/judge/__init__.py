"""The judge, pure: scenarios, scales, prompts, parsing, and the one judge call (render, request, parse)."""
