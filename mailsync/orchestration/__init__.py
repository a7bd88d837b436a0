"""Our own Prefect worker types (warm_worker.py); Prefect finds them via our entry point."""
