"""The judge endpoint: its HTTP API, guard, metrics, batcher, promotion gate, and the Ray Serve deployment."""
