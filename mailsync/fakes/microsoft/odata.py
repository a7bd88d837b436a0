"""The OData request conventions every Graph operation reads alike: query options, Prefer, keys."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request

from mailsync.fakes.microsoft.errors import GraphFault
from mailsync.fakes.microsoft.state import FakeMicrosoftState


def query(request: Request) -> dict[str, str]:
    # OData system query options are case-insensitive ($skipToken, $skiptoken, ...).
    return {key.lower(): value for key, value in request.query_params.items()}


def preferences(request: Request) -> tuple[int | None, bool]:
    """(odata.maxpagesize, IdType="ImmutableId") from any number of Prefer headers."""
    page_size: int | None = None
    immutable = False
    for header in request.headers.getlist("prefer"):
        for pref in header.split(","):
            name, _, value = pref.strip().partition("=")
            if name.strip().lower() == "odata.maxpagesize":
                # Graph ignores preferences it cannot apply.
                with contextlib.suppress(ValueError):
                    page_size = max(1, int(value.strip().strip('"')))
            elif name.strip().lower() == "idtype" and value.strip().strip('"') == "ImmutableId":
                immutable = True
    return page_size, immutable


def parse_select(
    options: dict[str, str], properties: frozenset[str], type_name: str
) -> tuple[str, ...] | None:
    """$select's properties (None: all of them); Graph refuses a property the type lacks."""
    param = options.get("$select")
    if not param:
        return None
    select = tuple(p.strip() for p in param.split(",") if p.strip())
    unknown = [p for p in select if p not in properties]
    if unknown:
        raise GraphFault(
            400,
            "RequestBroker--ParseUri",
            f"Could not find a property named '{unknown[0]}' on type '{type_name}'.",
        )
    return select


def key(value: str) -> str:
    """`value` as an OData key literal's content, ready for a link."""
    return quote(value.replace("'", "''"), safe="@'+=-_.")


def unquote_key(value: str) -> str:
    return value.replace("''", "'")


def user_part(user: str | None, address: str | None = None) -> str:
    """The path segment naming the mailbox, as links back to it spell it (None: /me)."""
    if user is None:
        return "me"
    return f"users('{key(address or user)}')"


@dataclass(frozen=True)
class GraphCall:
    """One Graph request as an operation sees it: the mailbox `user` names (None: /me) and,
    where the path names one, a folder (both with OData key quoting undone)."""

    fake: FakeMicrosoftState
    request: Request
    user: str | None
    folder: str | None
