"""Prefect tasks: small retryable units over the mailsync library."""
