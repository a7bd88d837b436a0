"""Push: the providers tell us of a mailbox's changes (Gmail watch, Graph subscriptions)."""
