"""Graph's mail folders: the top-level list, a folder's children and one folder, paged alike."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi.responses import JSONResponse, Response

from mailsync.fakes.microsoft import odata
from mailsync.fakes.microsoft.errors import GraphFault, base_url, not_found
from mailsync.fakes.microsoft.mailbox import Folder, Mailbox
from mailsync.fakes.microsoft.odata import GraphCall

DEFAULT_FOLDER_PAGE_SIZE = 10  # Graph's page size for folder lists without $top
MAX_FOLDER_PAGE_SIZE = 1000
FOLDER_PROPERTIES = frozenset(
    {
        "id",
        "displayName",
        "parentFolderId",
        "childFolderCount",
        "unreadItemCount",
        "totalItemCount",
        "isHidden",
    }
)


def top_level(call: GraphCall, mailbox: Mailbox) -> Response:
    return _collection(call, mailbox, mailbox.root, "mailFolders")


def children(call: GraphCall, mailbox: Mailbox) -> Response:
    parent = _container(mailbox, call.folder)
    path = f"mailFolders('{odata.key(parent.folder_id)}')/childFolders"
    return _collection(call, mailbox, parent, path)


def one(call: GraphCall, mailbox: Mailbox) -> Response:
    folder = _container(mailbox, call.folder)
    body = _body(mailbox, folder, _select(call))
    user_part = odata.user_part(call.user, mailbox.address)
    context = f"{base_url(call.request)}/v1.0/$metadata#{user_part}"
    return JSONResponse({"@odata.context": f"{context}/mailFolders/$entity", **body})


def _collection(call: GraphCall, mailbox: Mailbox, parent: Folder, path: str) -> Response:
    """A page of `parent`'s child folders: $top (default 10) at a time, linked by $skip."""
    request = call.request
    select = _select(call)
    options = odata.query(request)
    try:
        top = int(options.get("$top", DEFAULT_FOLDER_PAGE_SIZE))
        skip = int(options.get("$skip", 0))
    except ValueError as exc:
        raise GraphFault(400, "BadRequest", "Invalid $top or $skip value.") from exc
    if top < 1 or skip < 0:
        raise GraphFault(400, "BadRequest", "Invalid $top or $skip value.")
    top = min(top, MAX_FOLDER_PAGE_SIZE)
    folders = mailbox.children(parent.key)
    user_part = odata.user_part(call.user, mailbox.address)
    body: dict[str, Any] = {
        "@odata.context": f"{base_url(request)}/v1.0/$metadata#{user_part}/mailFolders",
        "value": [_body(mailbox, f, select) for f in folders[skip : skip + top]],
    }
    if skip + top < len(folders):
        params = {k: v for k, v in request.query_params.items() if k.lower() != "$skip"}
        params["$skip"] = str(skip + top)
        body["@odata.nextLink"] = (
            f"{base_url(request)}/v1.0/{user_part}/{path}?{urlencode(params, safe='$,')}"
        )
    return JSONResponse(body)


def _select(call: GraphCall) -> tuple[str, ...] | None:
    options = odata.query(call.request)
    return odata.parse_select(options, FOLDER_PROPERTIES, "microsoft.graph.mailFolder")


def _container(mailbox: Mailbox, segment: str | None) -> Folder:
    folder = mailbox.resolve_container(segment or "")
    if folder is None:
        raise not_found()
    return folder


def _body(mailbox: Mailbox, folder: Folder, select: tuple[str, ...] | None) -> dict[str, Any]:
    body = mailbox.folder_json(folder)
    if select is not None:
        body = {k: v for k, v in body.items() if k == "id" or k in select}
    return body
