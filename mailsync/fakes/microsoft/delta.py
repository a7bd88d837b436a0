"""Graph's message delta: a round of pages linked by @odata.nextLink, ended by a deltaLink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response

from mailsync.fakes.microsoft import odata
from mailsync.fakes.microsoft.content import MESSAGE_PROPERTIES
from mailsync.fakes.microsoft.errors import base_url, injected_graph_fault, not_found
from mailsync.fakes.microsoft.mailbox import Folder, Mailbox
from mailsync.fakes.microsoft.odata import GraphCall

DEFAULT_PAGE_SIZE = 10  # Graph's page size for message delta without odata.maxpagesize

# State tokens are encrypted payloads: "k" is the kind (delta or skip), "m"/"f" the mailbox and
# folder they belong to, "e" the mailbox's delta epoch (expire-delta bumps it), "s" the $select.
_DELTA, _SKIP = "d", "s"


@dataclass(frozen=True)
class RoundState:
    """Where a delta round stands: the folder, the log window (lo, hi] and the next offset."""

    address: str
    folder_key: str
    lo: int | None  # None: the initial round, which reports the folder's content as of `hi`
    hi: int
    offset: int
    select: tuple[str, ...] | None


def restart_link(call: GraphCall) -> str:
    """Where a round starts over: the delta URL without state, as a 410's Location."""
    mailbox = f"{base_url(call.request)}/v1.0/{odata.user_part(call.user)}"
    return f"{mailbox}/mailFolders('{odata.key(call.folder or '')}')/messages/delta"


def page(call: GraphCall, mailbox: Mailbox) -> Response:
    folder = mailbox.resolve_folder(call.folder or "")
    if folder is None:
        raise not_found()
    link_base = restart_link(call)
    page_size, immutable = odata.preferences(call.request)
    rs = _round(call, mailbox, folder, link_base)
    size = page_size or DEFAULT_PAGE_SIZE
    items = mailbox.round_items(folder.key, rs.lo, rs.hi)
    value: list[dict[str, Any]] = []
    for message_id, kind in items[rs.offset : rs.offset + size]:
        if kind == "remove":
            value.append(
                {
                    "@odata.type": "#microsoft.graph.message",
                    "id": mailbox.wire_id(message_id, folder.key, immutable),
                    "@removed": {"reason": "deleted"},
                }
            )
            continue
        message = mailbox.messages.get(message_id)
        # Gone or moved since the round began: a later round reports it as removed.
        if message is not None and message.folder_key == folder.key:
            value.append(mailbox.render(message, rs.select, immutable))
    body: dict[str, Any] = {
        "@odata.context": f"{base_url(call.request)}/v1.0/$metadata#Collection(message)"
    }
    end = rs.offset + size
    if end < len(items):
        token = _token(call, mailbox, folder, rs, k=_SKIP, lo=rs.lo, hi=rs.hi, o=end)
        body["@odata.nextLink"] = f"{link_base}?$skiptoken={token}"
    else:
        token = _token(call, mailbox, folder, rs, k=_DELTA, w=rs.hi)
        body["@odata.deltaLink"] = f"{link_base}?$deltatoken={token}"
    body["value"] = value
    applied = []
    if page_size is not None:
        applied.append(f"odata.maxpagesize={page_size}")
    if immutable:
        applied.append('IdType="ImmutableId"')
    headers = {"Preference-Applied": ", ".join(applied)} if applied else None
    return JSONResponse(body, headers=headers)


def _round(call: GraphCall, mailbox: Mailbox, folder: Folder, restart: str) -> RoundState:
    """The round a request continues ($skiptoken), begins after ($deltatoken) or starts."""
    options = odata.query(call.request)
    if "$deltatoken" in options:
        payload = _payload(call, mailbox, folder, options["$deltatoken"], _DELTA, restart)
        # A new round: everything logged after the previous round's watermark.
        return RoundState(
            mailbox.address, folder.key, int(payload["w"]), mailbox.seq, 0, _select(payload)
        )
    if "$skiptoken" in options:
        payload = _payload(call, mailbox, folder, options["$skiptoken"], _SKIP, restart)
        lo = payload.get("lo")
        return RoundState(
            mailbox.address,
            folder.key,
            None if lo is None else int(lo),
            int(payload["hi"]),
            int(payload["o"]),
            _select(payload),
        )
    select = odata.parse_select(options, MESSAGE_PROPERTIES, "microsoft.graph.message")
    return RoundState(mailbox.address, folder.key, None, mailbox.seq, 0, select)


def _payload(
    call: GraphCall, mailbox: Mailbox, folder: Folder, token: str, kind: str, restart: str
) -> dict[str, Any]:
    """A state token's payload; 410 (restart there) unless this fake issued it for this round."""
    payload = call.fake.decode_state(token)
    expected = {"k": kind, "m": mailbox.address, "f": folder.key, "e": mailbox.delta_epoch}
    if payload is None or any(payload.get(name) != want for name, want in expected.items()):
        raise injected_graph_fault(410, None, restart)
    return payload


def _token(
    call: GraphCall, mailbox: Mailbox, folder: Folder, rs: RoundState, **position: Any
) -> str:
    select = list(rs.select) if rs.select else None
    return call.fake.encode_state(
        {"m": mailbox.address, "f": folder.key, "s": select, "e": mailbox.delta_epoch, **position}
    )


def _select(payload: dict[str, Any]) -> tuple[str, ...] | None:
    select = payload.get("s")
    return tuple(select) if select else None
