"""Fake Gmail and Microsoft servers that speak the real wire protocols, for tests and the demo."""
