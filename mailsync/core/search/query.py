"""The search language of `q`, parsed once and translated safely for FTS5 and PostgreSQL.

Words are AND-ed, `"quoted phrases"` match their words in order, `word*` (or `"a phrase"*`)
matches a prefix of the last word. Text is split into runs of letters and digits, the same
way the index splits it (the FTS5 tokenizer and the tsvector expression of migration 0007),
so `ada@acme.com` is the phrase `ada acme com` on both databases. Every term reaches SQL
quoted and as a bound parameter: no query text is ever SQL, FTS5 or tsquery syntax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailsync.errors import SearchInputError

MAX_QUERY_CHARS = 512
MAX_TERMS = 16
_TOKEN = re.compile(r"[^\W_]+")  # letters and digits, Unicode-aware, as both indexes split


@dataclass(frozen=True)
class Term:
    """Words that must appear in this order (one word: anywhere); `prefix`: the last word
    may be the start of a longer one."""

    words: tuple[str, ...]
    prefix: bool = False


def _bad(message: str) -> SearchInputError:
    return SearchInputError(message, param="q")


def _term(text: str, prefix: bool) -> Term | None:
    words = tuple(w.lower() for w in _TOKEN.findall(text))
    if not words:
        if prefix:
            raise _bad("a prefix (word*) needs at least one letter or digit before the *")
        return None
    return Term(words, prefix)


def parse(q: str) -> list[Term]:
    """The terms of `q` (none for a blank q); SearchInputError (param q) for an unbalanced
    quote, a bare `*`, a q without any letter or digit, or one over the size limits."""
    if len(q) > MAX_QUERY_CHARS:
        raise _bad(f"q is longer than {MAX_QUERY_CHARS} characters")
    if q.count('"') % 2:
        raise _bad('q has an unbalanced quote (")')
    terms: list[Term] = []
    # Alternating outside / inside quotes: even pieces are plain words, odd ones phrases.
    pieces = q.split('"')
    for index, piece in enumerate(pieces):
        if index % 2:
            following = pieces[index + 1] if index + 1 < len(pieces) else ""
            term = _term(piece, prefix=following.startswith("*"))
            if term is not None:
                terms.append(term)
            continue
        if index > 0 and piece.startswith("*"):
            piece = piece[1:]  # the prefix mark of the phrase before
        for chunk in piece.split():
            body, stars = chunk.rstrip("*"), len(chunk) - len(chunk.rstrip("*"))
            if "*" in body:
                raise _bad(f"'*' may only end a word (in {chunk!r})")
            term = _term(body, prefix=stars > 0)
            if term is not None:
                terms.append(term)
    if q.strip() and not terms:
        raise _bad("q has no letter or digit to search for")
    if len(terms) > MAX_TERMS:
        raise _bad(f"q has more than {MAX_TERMS} terms")
    return terms


def to_fts5(terms: list[Term]) -> str:
    """An FTS5 MATCH expression: every term a double-quoted string (words are letters and
    digits only, so nothing inside can end the quote), `*` after a prefix, implicit AND."""
    return " ".join(f'"{" ".join(t.words)}"' + ("*" if t.prefix else "") for t in terms)


def to_tsquery(terms: list[Term]) -> str:
    """A `to_tsquery('simple', ...)` text: each word single-quoted, phrases joined by `<->`,
    `:*` on a prefix's last word, terms AND-ed."""
    parts = []
    for term in terms:
        words = [f"'{w}'" for w in term.words]
        if term.prefix:
            words[-1] += ":*"
        parts.append(" <-> ".join(words) if len(words) == 1 else f"({' <-> '.join(words)})")
    return " & ".join(parts)
