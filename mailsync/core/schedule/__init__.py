"""What scheduled rounds decide, on plain values: due mailboxes, nightly syncs, summaries."""
