"""Syncing one mailbox: the engine, the index it writes, the read-ahead of provider pages."""
