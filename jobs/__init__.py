"""Ray job entry points: `python -m jobs.<stage> --config CONFIG [key=value ...]`."""
