"""Webhooks: signed, retried, never-lost notices of sync jobs that ended (see the README)."""
