"""The HTTP API: a thin FastAPI layer over mailsync.jobs; it knows nothing of providers."""
