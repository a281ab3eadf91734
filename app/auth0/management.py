"""The Auth0 Management API, as far as the poller needs it: a client-credentials token and
`GET /api/v2/logs` by checkpoint. Every failure becomes one ManagementError subclass with a message
that names the cause and never a secret."""

from __future__ import annotations

import hashlib
import ipaddress
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from app.retry import parse_retry_after

# Observed log id format (README 2.1): "900" + YYYYMMDDHHMMSS (UTC) + more digits, 56 in all.
_ID_DATE = re.compile(r"^900(\d{14})")
_DATE_CHECKPOINT = re.compile(r"900\d{14}0{39}")  # log_id_at's output
# A START_FROM log id: digits, without requiring the observed prefix (lenient with other real ids),
# but long enough that a typo or a small number is refused.
_LOG_ID = re.compile(r"\d{20,255}")
MAX_TAKE = 100  # Auth0 answers at most this many logs a request
TOKEN_MARGIN_SECONDS = 60.0  # renew this long before a long-lived token expires
TOKEN_MARGIN_SHARE = 0.1  # ... or this share of its lifetime, when that is shorter


class ManagementError(Exception):
    """Auth0 could not be read; the message says why."""


class CredentialsRejected(ManagementError):
    """The token endpoint refused AUTH0_CLIENT_ID/AUTH0_CLIENT_SECRET."""


class Unreachable(ManagementError):
    """No HTTP answer: DNS, connection or timeout."""


class BadAnswer(ManagementError):
    """An answer that is not what the API documents (status or body)."""


class ServerError(BadAnswer):
    """A 5xx answer: worth asking again."""


class UnknownCheckpoint(ManagementError):
    """Auth0 answered 400 to `from=<checkpoint>`: the log is past retention or never existed."""


class RateLimited(ManagementError):
    """HTTP 429: ask again after `reset_at` (unix seconds) and `retry_after` (seconds), when given."""

    def __init__(self, what: str, reset_at: float | None, retry_after: float | None) -> None:
        super().__init__(f"{what} answered 429")
        self.reset_at = reset_at
        self.retry_after = retry_after

    @classmethod
    def of(cls, response: httpx.Response, what: str) -> RateLimited:
        retry_after = parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC))
        return cls(what, _reset(response), retry_after)


_HOST = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")


def normalise_domain(value: str) -> str:
    """AUTH0_DOMAIN as a bare domain (`tenant.eu.auth0.com`, https implied) or a base URL
    (`http://127.0.0.1:9000`), trimmed and lower-cased; ValueError for a path, a query or another scheme.
    A refused value is shown by its scheme and host alone: its user name, password, path or query may
    hold a secret."""
    text = value.strip()
    bare = "://" not in text
    parts = urlsplit(f"https://{text}" if bare else text)
    shown = repr(parts.hostname or "" if bare else f"{parts.scheme}://{parts.hostname or ''}")
    example = "use a domain such as tenant.eu.auth0.com or a base URL such as https://tenant.eu.auth0.com"
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"{shown} is not an http(s) address: {example}")
    if parts.path.strip("/"):
        raise ValueError(f"{shown} has a path: {example}, without /api/v2")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{shown} has a query, a fragment or a user name: {example}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{shown} has an invalid port: {example}") from None
    host = (parts.hostname or "").lower()
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        if not _HOST.fullmatch(host):
            raise ValueError(f"{shown} has no valid host name: {example}") from None
    netloc = host if port is None else f"{host}:{port}"
    return netloc if bare else f"{parts.scheme.lower()}://{netloc}"


def log_id_at(moment: datetime) -> str:
    """The smallest log id of `moment`'s second: `from=` it reads every log from that time on."""
    return "900" + moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "0" * 39


def is_date_checkpoint(log_id: str | None) -> bool:
    """Whether `log_id` is one log_id_at made: a time, not a log Auth0 has."""
    return bool(_DATE_CHECKPOINT.fullmatch(log_id or ""))


def date_of_log_id(log_id: str | None) -> datetime | None:
    """The UTC second a log id was issued in, when it has the observed format."""
    match = _ID_DATE.match(log_id or "")
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def start_checkpoint(start_from: str) -> str:
    """START_FROM as a checkpoint: an ISO date/time becomes a log id prefix; a log id stays as it is.
    ValueError for anything else."""
    text = start_from.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ].*)?", text):
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"START_FROM {text!r} is not a valid ISO date/time: {exc}") from None
        return log_id_at(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    if not _LOG_ID.fullmatch(text):
        raise ValueError(
            f"START_FROM {text!r} is neither an Auth0 log id (digits, such as "
            "90020240308035328208838000000000000001223372052034940964) nor an ISO date/time "
            "(2026-11-01 or 2026-11-01T08:30:00Z)"
        )
    return text


@dataclass(slots=True)
class RateLimit:
    remaining: int | None = None
    reset_at: float | None = None  # unix seconds

    @classmethod
    def of(cls, response: httpx.Response) -> RateLimit:
        return cls(_number(response.headers.get("x-ratelimit-remaining")), _reset(response))


@dataclass(slots=True)
class LogsPage:
    items: list[dict[str, Any]]
    rate: RateLimit = field(default_factory=RateLimit)


def renew_margin(expires_in: float) -> float:
    """How long before expiry a token is renewed: a minute, or a tenth of a shorter lifetime (a
    60-second token would otherwise never be reused)."""
    return min(TOKEN_MARGIN_SECONDS, max(expires_in, 0.0) * TOKEN_MARGIN_SHARE)


@dataclass(frozen=True, slots=True)
class Token:
    value: str
    expires_at: float  # unix seconds, as Auth0 said
    renew_at: float  # unix seconds: from here on a new one is fetched

    @classmethod
    def issued(cls, value: str, expires_in: float, now: float) -> Token:
        return cls(value, now + expires_in, now + expires_in - renew_margin(expires_in))

    def is_fresh(self, now: float) -> bool:
        return now < self.renew_at

    def __repr__(self) -> str:  # never the bearer token itself
        return f"Token(expires_at={self.expires_at}, renew_at={self.renew_at})"


class TokenStore(Protocol):
    """Where tokens are kept by key (a digest of base URL, client id and secret): each fetch costs a
    rate-limited call, counts against the plan's monthly M2M token quota and writes a `seccft` log."""

    async def get(self, key: str) -> Token | None: ...

    async def put(self, key: str, token: Token) -> None: ...

    async def drop(self, key: str) -> None: ...


class TokenCache:
    """Tokens in this process's memory, shared by all its passes."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}

    async def get(self, key: str) -> Token | None:
        token = self._tokens.get(key)
        return token if token and token.is_fresh(time.time()) else None

    async def put(self, key: str, token: Token) -> None:
        self._tokens[key] = token

    async def drop(self, key: str) -> None:
        self._tokens.pop(key, None)

    def clear(self) -> None:
        self._tokens.clear()


TOKENS = TokenCache()


def token_key(base_url: str, client_id: str, client_secret: str) -> str:
    """The secret's digest is in the key: new credentials (or another tenant) never reuse an old token."""
    return hashlib.sha256("\0".join((base_url.rstrip("/"), client_id, client_secret)).encode()).hexdigest()


class ManagementClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        tokens: TokenStore = TOKENS,
        timeout: float = 30.0,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self._tokens = tokens
        self._key = token_key(self._base, client_id, client_secret)
        self._timeout = timeout

    async def get_logs(self, checkpoint: str | None, take: int) -> LogsPage:
        """The `take` logs after `checkpoint` in log id order; with no checkpoint, the oldest retained
        logs (search mode, sorted by date ascending, as the extensions did)."""
        if checkpoint is None:
            params: dict[str, str | int] = {"sort": "date:1", "page": 0, "per_page": take}
        else:
            params = {"from": checkpoint, "take": take}
        response = await self._get_with_token("/api/v2/logs", params)
        if response.status_code == 429:
            raise RateLimited.of(response, "GET /api/v2/logs")
        if response.status_code == 400 and checkpoint is not None:
            raise UnknownCheckpoint(
                f"Auth0 does not know the checkpoint {checkpoint} (400: {_auth0_message(response)})"
            )
        if response.status_code == 403:
            await self._tokens.drop(self._key)
            raise BadAnswer(
                f"Auth0 refused to list logs (403: {_auth0_message(response)}); the client "
                "needs the read:logs scope on the Management API"
            )
        if response.status_code >= 500:
            raise ServerError(f"GET /api/v2/logs answered {response.status_code}: {_auth0_message(response)}")
        if response.status_code != 200:
            raise BadAnswer(f"GET /api/v2/logs answered {response.status_code}: {_auth0_message(response)}")
        items = _json(response, "GET /api/v2/logs")
        if isinstance(items, dict) and isinstance(items.get("logs"), list):
            items = items["logs"]  # include_totals shape
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise BadAnswer("GET /api/v2/logs did not answer a JSON array of log objects")
        return LogsPage(items, RateLimit.of(response))

    async def _get_with_token(self, path: str, params: dict[str, str | int]) -> httpx.Response:
        for attempt in (1, 2):
            token = await self._token()
            response = await self._request(
                "GET", path, params=params, headers={"Authorization": f"Bearer {token}"}
            )
            if response.status_code != 401 or attempt == 2:
                return response
            await self._tokens.drop(self._key)  # expired or revoked early: fetch a new one once
        raise AssertionError("unreachable")

    async def _token(self) -> str:
        token = await self._tokens.get(self._key)
        if token is not None and token.is_fresh(time.time()):
            return token.value
        body = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._secret,
            "audience": f"{self._base}/api/v2/",
        }
        response = await self._request("POST", "/oauth/token", json=body)
        if response.status_code == 429:
            raise RateLimited.of(response, "POST /oauth/token")
        if response.status_code == 401:
            raise CredentialsRejected(
                f"Auth0 refused the client credentials of AUTH0_CLIENT_ID {self._client_id!r} "
                f"(401: {_auth0_message(response)})"
            )
        if response.status_code == 403:
            raise CredentialsRejected(
                f"Auth0 refused the client-credentials grant of AUTH0_CLIENT_ID {self._client_id!r} "
                f"(403: {_auth0_message(response)}); the application must be authorised for the "
                f"Management API, audience {self._base}/api/v2/"
            )
        if response.status_code != 200:
            error = ServerError if response.status_code >= 500 else BadAnswer
            raise error(f"POST /oauth/token answered {response.status_code}: {_auth0_message(response)}")
        answer = _json(response, "POST /oauth/token")
        value = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(value, str) or not value:
            raise BadAnswer("POST /oauth/token answered without an access_token")
        expires_in = answer.get("expires_in") if isinstance(answer, dict) else None
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        await self._tokens.put(self._key, Token.issued(value, lifetime, time.time()))
        return value

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, self._base + path, timeout=self._timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise Unreachable(
                f"Auth0 at {self._base} did not answer {method} {path} in time ({_why(exc)})"
            ) from None
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach Auth0 at {self._base} ({method} {path}: {_why(exc)})") from None


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        kind = response.headers.get("content-type", "no content type")
        raise BadAnswer(
            f"{what} answered {response.status_code} with a body that is not JSON ({kind})"
        ) from None


def _auth0_message(response: httpx.Response) -> str:
    """Auth0's own error text (`error_description`, `message` or `error`), cut short."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.reason_phrase or "no JSON body"
    if isinstance(body, dict):
        for key in ("error_description", "message", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])[:300]
    return response.reason_phrase or "no message"


def _why(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _number(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def _reset(response: httpx.Response) -> float | None:
    """x-ratelimit-reset is a unix time; a small number is read as seconds from now instead."""
    value = response.headers.get("x-ratelimit-reset")
    try:
        reset = float(value) if value is not None else None
    except ValueError:
        return None
    return time.time() + reset if reset is not None and reset < 1e9 else reset
