"""Ray Data: engine actor pools over row streams, stage write-out, the call cache, IFD scoring, typed tables."""
