"""The domain: plain Python (and SQLModel), no Prefect, no FastAPI."""
