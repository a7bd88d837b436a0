"""Sync jobs: the typed contract between flows and the library, the store, the public view."""
