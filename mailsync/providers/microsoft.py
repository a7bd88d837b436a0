"""Lets mailsync sync Microsoft 365 mailboxes: msal for tokens, Graph message delta for changes."""

from __future__ import annotations

import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import quote

import certifi
import httpx
import msal
import requests
from msal.exceptions import MsalServiceError

from mailsync.providers.base import (
    AuthError,
    CursorExpiredError,
    MessageRecord,
    Page,
    ProviderEndpoints,
    ProviderError,
    TransientProviderError,
)

logger = logging.getLogger(__name__)

APP_SCOPES = ["https://graph.microsoft.com/.default"]
DELEGATED_SCOPES = ["https://graph.microsoft.com/Mail.Read"]
# Only what the index needs; `id` always comes back.
SELECT_FIELDS = (
    "conversationId",
    "subject",
    "bodyPreview",
    "from",
    "sender",
    "toRecipients",
    "ccRecipients",
    "receivedDateTime",
)
CURSOR_VERSION = 1

_CREDENTIAL_FIELDS = {
    "client_credentials": ("tenant_id", "client_id", "client_secret"),
    "refresh_token": ("tenant_id", "client_id", "client_secret", "refresh_token"),
}
# Tenant ids are GUIDs or domain names; they end up in the authority URL path.
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
_AUTH_ERRORS = frozenset(
    {
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "invalid_scope",
        "invalid_resource",
        "invalid_tenant",
        "interaction_required",
        "consent_required",
        "login_required",
        "access_denied",
    }
)
_TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error"})
_SYNC_STATE_CODES = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
_AADSTS_RE = re.compile(r"AADSTS\d+")


def validate_credentials(credentials: dict) -> dict:
    """A normalised copy of Microsoft credentials, or ValueError naming the problem (never a value).

    Accepted shapes::

        {"type": "client_credentials", "tenant_id", "client_id", "client_secret"}
        {"type": "refresh_token", "tenant_id", "client_id", "client_secret", "refresh_token"}
    """
    if not isinstance(credentials, dict):
        raise ValueError("Microsoft credentials must be a JSON object")
    kind = credentials.get("type")
    if kind not in _CREDENTIAL_FIELDS:
        raise ValueError(
            "Microsoft credentials 'type' must be one of: " + ", ".join(sorted(_CREDENTIAL_FIELDS))
        )
    required = _CREDENTIAL_FIELDS[kind]
    unknown = sorted(set(credentials) - {"type", *required})
    if unknown:
        raise ValueError(f"unexpected field(s) in Microsoft {kind} credentials: {unknown}")
    normalised: dict[str, str] = {"type": kind}
    for name in required:
        value = credentials.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"Microsoft {kind} credentials need a non-empty string '{name}'")
        normalised[name] = value.strip()
    if not _TENANT_RE.match(normalised["tenant_id"]):
        raise ValueError("Microsoft 'tenant_id' must be a tenant GUID or domain name")
    return normalised


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _caused_by_tls_verification(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(6):  # httpx wraps httpcore, which wraps ssl
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _parse_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    # Graph may send 7 fractional digits; fromisoformat wants at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _address(recipient: Any) -> str | None:
    if isinstance(recipient, dict):
        email = recipient.get("emailAddress")
        if isinstance(email, dict) and isinstance(email.get("address"), str):
            return email["address"] or None
    return None


def _addresses(recipients: Any) -> list[str]:
    if not isinstance(recipients, list):
        return []
    return [a for a in (_address(r) for r in recipients) if a]


def to_record(item: dict[str, Any], folder: str) -> MessageRecord:
    """A Graph message (delta item) as an index entry; `folder` becomes its only label."""
    return MessageRecord(
        provider_message_id=item["id"],
        thread_id=item.get("conversationId"),
        sender=_address(item.get("from")) or _address(item.get("sender")),
        to=_addresses(item.get("toRecipients")),
        cc=_addresses(item.get("ccRecipients")),
        subject=item.get("subject"),
        snippet=item.get("bodyPreview"),
        date=_parse_datetime(item.get("receivedDateTime")),
        labels=[folder],
        # Graph v1.0's message resource has no size property to map honestly.
        size=None,
    )


class _Throttled(Exception):
    """A 429 (Graph or token endpoint) that may be waited out in-process."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _IdentitySession(requests.Session):
    """msal's HTTP client: no environment CA overrides, a default timeout, and a memory of the
    last response's status and Retry-After (msal's error dicts carry neither)."""

    def __init__(self, verify: str | bool, timeout: float) -> None:
        super().__init__()
        # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would otherwise replace `verify`.
        self.trust_env = False
        self.verify = verify
        self._timeout = timeout
        self.last_status: int | None = None
        self.last_retry_after: float | None = None
        self.hooks["response"].append(self._remember)

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.last_status = response.status_code
        self.last_retry_after = _retry_after(response.headers.get("Retry-After"))


class MicrosoftProvider:
    """One Microsoft 365 mailbox, synced folder by folder with Graph message delta."""

    name = "microsoft"
    # A 429 is retried in-process this many times, but only when Retry-After is short enough to
    # wait out here; a longer wait goes back to the caller as TransientProviderError.retry_after.
    max_throttle_retries = 2
    max_retry_after_wait = 5.0
    default_retry_after = 1.0
    timeout = httpx.Timeout(30.0, connect=10.0)

    def __init__(
        self,
        address: str,
        credentials: dict,
        endpoints: ProviderEndpoints,
        *,
        folders: tuple[str, ...] = ("inbox", "sentitems"),
        page_size: int = 100,
    ) -> None:
        if not folders:
            raise ValueError("at least one folder is needed")
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self.address = address
        self.folders = tuple(dict.fromkeys(folders))  # a repeated folder would clash in the cursor
        self.page_size = page_size
        self._credentials = validate_credentials(credentials)
        self._authority = (
            f"{endpoints.microsoft_authority_host.rstrip('/')}/{self._credentials['tenant_id']}"
        )
        self._graph_base = endpoints.graph_api_url.rstrip("/")
        self._graph_origin = httpx.URL(self._graph_base + "/")
        self._session = _IdentitySession(endpoints.ca_bundle or True, self.timeout.read or 30.0)
        self._http = httpx.Client(
            base_url=self._graph_base,
            verify=self._ssl_context(endpoints.ca_bundle),
            trust_env=False,
            timeout=self.timeout,
            headers={
                "Accept": "application/json",
                # Immutable ids survive moves between folders, so a move is not a delete + add.
                "Prefer": f'odata.maxpagesize={page_size}, IdType="ImmutableId"',
            },
        )
        self._app: msal.ConfidentialClientApplication | None = None
        self._force_refresh = False

    @staticmethod
    def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext | bool:
        if not ca_bundle:
            return True
        context = ssl.create_default_context(cafile=certifi.where())
        context.load_verify_locations(cafile=ca_bundle)
        return context

    # --- MailProvider ------------------------------------------------------------------

    def full_sync(self) -> Iterator[Page]:
        start = f"?$select={','.join(SELECT_FIELDS)}"
        links = {
            folder: f"/users/{quote(self.address, safe='@')}/mailFolders/"
            f"{quote(folder, safe='')}/messages/delta{start}"
            for folder in self.folders
        }
        return self._sync(links, from_cursor=False)

    def incremental_sync(self, cursor: str) -> Iterator[Page]:
        # A generator, so a bad cursor surfaces while iterating, like every other failure.
        yield from self._sync(self._read_cursor(cursor), from_cursor=True)

    def close(self) -> None:
        self._http.close()
        self._session.close()

    # --- sync --------------------------------------------------------------------------

    def _read_cursor(self, cursor: str) -> dict[str, str]:
        try:
            data = json.loads(cursor)
            links = data["delta_links"]
            ok = data.get("version") == CURSOR_VERSION and isinstance(links, dict)
        except (ValueError, TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise CursorExpiredError("unreadable Microsoft cursor; a full sync is needed")
        if set(links) != set(self.folders):
            raise CursorExpiredError("the synced folders changed; a full sync is needed")
        for link in links.values():
            if not isinstance(link, str) or not self._is_graph_url(link):
                # Never send a token to wherever a stored cursor points.
                raise CursorExpiredError("cursor does not belong to this Graph endpoint")
        return {folder: links[folder] for folder in self.folders}

    def _is_graph_url(self, link: str) -> bool:
        try:
            url = httpx.URL(link)
        except (httpx.InvalidURL, TypeError):
            return False
        origin = self._graph_origin
        return (
            url.scheme == origin.scheme
            and url.host == origin.host
            and url.port == origin.port
            and url.path.startswith(origin.path)
        )

    def _sync(self, start_links: dict[str, str], *, from_cursor: bool) -> Iterator[Page]:
        delta_links: dict[str, str] = {}
        # Graph reports a move between two synced folders as a removal from one and an upsert in
        # the other, in whichever order the folders are read. Removals are therefore held back
        # to the last page and dropped for any id this run upserted, so a move never deletes.
        removed: dict[str, None] = {}
        upserted: set[str] = set()
        for index, folder in enumerate(self.folders):
            link: str | None = start_links[folder]
            is_last_folder = index == len(self.folders) - 1
            while link is not None:
                body = self._get(link, expiring=from_cursor)
                page = Page()
                for item in body.get("value") or []:
                    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                        continue
                    if "@removed" in item:
                        removed[item["id"]] = None
                    else:
                        page.upserts.append(to_record(item, folder))
                        upserted.add(item["id"])
                next_link = body.get("@odata.nextLink")
                delta_link = body.get("@odata.deltaLink")
                if isinstance(next_link, str):
                    link = self._checked(next_link)
                elif isinstance(delta_link, str):
                    delta_links[folder] = self._checked(delta_link)
                    link = None
                    if is_last_folder:
                        page.deletions = [i for i in removed if i not in upserted]
                        page.cursor = json.dumps(
                            {"version": CURSOR_VERSION, "delta_links": delta_links},
                            sort_keys=True,
                        )
                else:
                    raise ProviderError("Graph delta page without nextLink or deltaLink")
                yield page

    def _checked(self, link: str) -> str:
        if not self._is_graph_url(link):
            raise ProviderError("Graph returned a link outside the configured Graph endpoint")
        return link

    # --- Graph HTTP --------------------------------------------------------------------

    def _get(self, url: str, *, expiring: bool) -> dict[str, Any]:
        """GET a Graph URL as JSON, translating failures; 429s are retried per the class limits."""
        return self._with_throttle_retries(lambda: self._get_once(url, expiring=expiring))

    def _with_throttle_retries(self, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                return call()
            except _Throttled as exc:
                wait = exc.retry_after if exc.retry_after is not None else self.default_retry_after
                if attempt >= self.max_throttle_retries or wait > self.max_retry_after_wait:
                    raise TransientProviderError(str(exc), retry_after=exc.retry_after) from exc
                attempt += 1
                logger.info("microsoft: throttled (%s), retry %d in %.1fs", exc, attempt, wait)
                # A hair over Retry-After: msal refuses identical token requests until it passes.
                time.sleep(wait + 0.05)

    def _get_once(self, url: str, *, expiring: bool) -> dict[str, Any]:
        retried_auth = False
        while True:
            headers = {
                "Authorization": f"Bearer {self._access_token()}",
                "client-request-id": str(uuid.uuid4()),
            }
            try:
                response = self._http.get(url, headers=headers)
            except httpx.TimeoutException as exc:
                raise TransientProviderError("Microsoft Graph timed out") from exc
            except httpx.TransportError as exc:
                if _caused_by_tls_verification(exc):
                    # A certificate problem is configuration; retrying will not fix it.
                    raise ProviderError("TLS verification failed for Microsoft Graph") from exc
                raise TransientProviderError(
                    f"could not reach Microsoft Graph ({type(exc).__name__})"
                ) from exc
            if response.status_code == 401 and not retried_auth:
                # The token may have been revoked or expired early; get a fresh one once.
                retried_auth = True
                self._drop_access_token()
                continue
            if response.status_code == 200:
                try:
                    body = response.json()
                except ValueError as exc:
                    raise TransientProviderError("Microsoft Graph sent malformed JSON") from exc
                if not isinstance(body, dict):
                    raise TransientProviderError("Microsoft Graph sent an unexpected body")
                return body
            self._raise_for_graph(response, expiring=expiring)

    def _raise_for_graph(self, response: httpx.Response, *, expiring: bool) -> NoReturn:
        status = response.status_code
        code, message = "", ""
        try:
            error = response.json().get("error") or {}
            code, message = str(error.get("code") or ""), str(error.get("message") or "")
        except (ValueError, AttributeError):
            pass
        detail = f"Microsoft Graph {status}" + (f" {code}" if code else "")
        if message:
            detail += f": {message[:200]}"
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if status == 410 or code.lower() in _SYNC_STATE_CODES:
            if expiring:
                raise CursorExpiredError(detail)
            # A fresh round has no state to lose; the caller may simply try again.
            raise TransientProviderError(detail, retry_after=retry_after)
        if status == 429:
            raise _Throttled(detail, retry_after)
        if status in (401, 403):
            raise AuthError(detail)
        if status >= 500 or status == 408:
            raise TransientProviderError(detail, retry_after=retry_after)
        raise ProviderError(detail)

    # --- tokens ------------------------------------------------------------------------

    def _msal_app(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            creds = self._credentials
            try:
                # Construction fetches the tenant's OpenID configuration.
                self._app = msal.ConfidentialClientApplication(
                    creds["client_id"],
                    client_credential=creds["client_secret"],
                    authority=self._authority,
                    http_client=self._session,
                    instance_discovery=False,
                    token_cache=msal.TokenCache(),
                )
            except ValueError as exc:
                status = self._session.last_status
                if status == 429:
                    raise _Throttled(
                        "Microsoft identity platform throttled tenant discovery",
                        self._session.last_retry_after,
                    ) from exc
                if status in (400, 404):
                    raise AuthError(
                        "Microsoft identity platform does not know this tenant"
                    ) from exc
                raise ProviderError("invalid Microsoft authority configuration") from exc
            except (MsalServiceError, requests.RequestException) as exc:
                self._raise_identity_unreachable(exc)
        app: msal.ConfidentialClientApplication = self._app
        return app

    def _raise_identity_unreachable(self, exc: Exception) -> NoReturn:
        if isinstance(exc, requests.exceptions.SSLError):
            raise ProviderError(
                "TLS verification failed for the Microsoft identity platform"
            ) from exc
        raise TransientProviderError(
            f"Microsoft identity platform unavailable ({type(exc).__name__})",
            retry_after=self._session.last_retry_after,
        ) from exc

    def _access_token(self) -> str:
        app = self._msal_app()
        creds = self._credentials
        try:
            if creds["type"] == "client_credentials":
                # msal answers from its cache until the token is close to expiry.
                result = app.acquire_token_for_client(scopes=APP_SCOPES)
            else:
                result = None
                accounts = app.get_accounts()
                if accounts:
                    result = app.acquire_token_silent(
                        DELEGATED_SCOPES, account=accounts[0], force_refresh=self._force_refresh
                    )
                if not result or "access_token" not in result:
                    result = app.acquire_token_by_refresh_token(
                        creds["refresh_token"], scopes=DELEGATED_SCOPES
                    )
        except (MsalServiceError, requests.RequestException) as exc:
            self._raise_identity_unreachable(exc)
        self._force_refresh = False
        if isinstance(result, dict) and isinstance(result.get("access_token"), str):
            return result["access_token"]
        self._raise_for_token_error(result if isinstance(result, dict) else {})

    def _raise_for_token_error(self, result: dict[str, Any]) -> NoReturn:
        error = str(result.get("error") or "unknown_error")
        codes = _AADSTS_RE.findall(str(result.get("error_description") or ""))[:1]
        detail = f"Microsoft identity platform refused the token request: {error}"
        if codes:
            detail += f" ({codes[0]})"
        status = self._session.last_status
        if status == 429:
            raise _Throttled(detail, self._session.last_retry_after)
        if error in _AUTH_ERRORS:
            raise AuthError(detail)
        if error in _TRANSIENT_ERRORS or (status is not None and status >= 500):
            raise TransientProviderError(detail, retry_after=self._session.last_retry_after)
        raise ProviderError(detail)

    def _drop_access_token(self) -> None:
        if self._app is None:
            return
        if self._credentials["type"] == "client_credentials":
            self._app.remove_tokens_for_client()
        else:
            self._force_refresh = True
