"""The trigger rules as policy: 409 one full sync, 429 quotas, Idempotency-Key replays."""
