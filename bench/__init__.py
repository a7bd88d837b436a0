"""Benchmarks of mailsync: `python -m bench <name> [--size tiny|small|full]` (see BENCHMARKS.md)."""
