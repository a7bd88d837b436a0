"""The search language: parsing `q` and its translations to FTS5 and tsquery text."""

from __future__ import annotations

import pytest

from mailsync.core.search.query import MAX_TERMS, Term, parse, to_fts5, to_tsquery
from mailsync.errors import SearchInputError


@pytest.mark.parametrize(
    ("q", "terms"),
    [
        ("", []),
        ("   ", []),
        ("Invoice", [Term(("invoice",))]),
        ("invoice march", [Term(("invoice",)), Term(("march",))]),
        ('"due in March"', [Term(("due", "in", "march"))]),
        ("inv*", [Term(("inv",), prefix=True)]),
        ('"due ma"*', [Term(("due", "ma"), prefix=True)]),
        ("ada@acme.com", [Term(("ada", "acme", "com"))]),
        ('a "b c" d*', [Term(("a",)), Term(("b", "c")), Term(("d",), prefix=True)]),
        ("Größe", [Term(("größe",))]),
        ("a - b", [Term(("a",)), Term(("b",))]),
    ],
)
def test_parse(q: str, terms: list[Term]) -> None:
    """Words are AND-ed terms, quotes make a phrase, a trailing * a prefix; text splits into
    runs of letters and digits, lower-cased, as the indexes split it."""
    assert parse(q) == terms


@pytest.mark.parametrize(
    "q", ['"unbalanced', 'a "b" "c', "*", "a*b", "!!!", '""*', "x" * 513, "a " * (MAX_TERMS + 1)]
)
def test_unusable_queries_are_refused_naming_q(q: str) -> None:
    """An unbalanced quote, a bare or inner *, a q with nothing to search for, or one over
    the limits is a SearchInputError whose param is q (the API's 400)."""
    with pytest.raises(SearchInputError) as caught:
        parse(q)
    assert caught.value.param == "q" and caught.value.code == "invalid_request"


def test_translations_quote_every_term() -> None:
    """FTS5 gets each term double-quoted (`*` outside the quote), tsquery each word
    single-quoted with `<->` inside phrases and `:*` on a prefix: query operators typed by a
    caller (OR, NOT, NEAR, !, |, :, parentheses) are never operators, only dropped text."""
    terms = parse('OR NOT "a NEAR b" c*')
    assert to_fts5(terms) == '"or" "not" "a near b" "c"*'
    assert to_tsquery(terms) == "'or' & 'not' & ('a' <-> 'near' <-> 'b') & 'c':*"
    hostile = parse("x') | (!y: & z")
    assert to_fts5(hostile) == '"x" "y" "z"'
    assert to_tsquery(hostile) == "'x' & 'y' & 'z'"
