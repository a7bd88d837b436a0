"""mailsync: keeps Gmail and Microsoft 365 mailboxes synchronized into a searchable index."""

__version__ = "0.1.0"
