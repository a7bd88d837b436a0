"""The HTTP API: a thin FastAPI layer over the orchestrator; it knows nothing of providers."""
