"""Searching the live message index: the query language, stable ids, cursors, the queries."""
