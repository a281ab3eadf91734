"""The Management API client the poller uses, and its tokens kept in poller_state (SavedTokens)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import Update, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth0 import management
from app.auth0.management import ManagementClient, ManagementError, Token, TokenCache
from app.context import Context
from app.models import PollerState
from app.poller.state import STATE

log = logging.getLogger(__name__)


def management_client(context: Context) -> ManagementClient:
    settings = context.settings
    base_url, secret = settings.auth0_base_url, settings.auth0_client_secret
    if not (base_url and settings.auth0_client_id and secret):
        raise ManagementError("set AUTH0_DOMAIN, AUTH0_CLIENT_ID and AUTH0_CLIENT_SECRET to poll")
    tokens = SavedTokens(context.engine, management.TOKENS)
    return ManagementClient(
        context.http, base_url, settings.auth0_client_id, secret.get_secret_value(), tokens=tokens
    )


class SavedTokens:
    """Management API tokens kept in poller_state, with this process's cache in front: `poll --once`
    from cron would otherwise fetch one per run (about 43,000 a month at one a minute).

    The database only saves fetches: when it fails, the token lives in memory and the pass goes on.
    Its errors are logged by class name only, since a SQLAlchemy message carries the parameters."""

    def __init__(self, engine: AsyncEngine, cache: TokenCache) -> None:
        self._engine = engine
        self._cache = cache

    async def get(self, key: str) -> Token | None:
        if token := await self._cache.get(key):
            return token
        columns = (
            PollerState.access_token,
            PollerState.access_token_expires_at,
            PollerState.access_token_renew_at,
        )
        try:
            async with self._engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(*columns).where(PollerState.name == STATE, PollerState.access_token_key == key)
                    )
                ).first()
        except SQLAlchemyError as exc:
            _not_kept(exc)
            return None
        if row is None:
            return None
        value, expires_at, renew_at = row
        if value is None or expires_at is None or renew_at is None:
            return None
        token = Token(value, expires_at.timestamp(), renew_at.timestamp())
        await self._cache.put(key, token)
        return token

    async def put(self, key: str, token: Token) -> None:
        await self._cache.put(key, token)
        await self._execute(
            update(PollerState)
            .where(PollerState.name == STATE)
            .values(
                access_token=token.value,
                access_token_key=key,
                access_token_expires_at=datetime.fromtimestamp(token.expires_at, UTC),
                access_token_renew_at=datetime.fromtimestamp(token.renew_at, UTC),
            )
        )

    async def drop(self, key: str) -> None:
        await self._cache.drop(key)
        # Only this key's token: another process may have saved one for other credentials since.
        await self._execute(
            update(PollerState)
            .where(PollerState.name == STATE, PollerState.access_token_key == key)
            .values(
                access_token=None,
                access_token_key=None,
                access_token_expires_at=None,
                access_token_renew_at=None,
            )
        )

    async def _execute(self, statement: Update) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(statement)
        except SQLAlchemyError as exc:
            _not_kept(exc)


def _not_kept(exc: SQLAlchemyError) -> None:
    log.warning(
        "the Management API token could not be kept in the database", extra={"reason": type(exc).__name__}
    )
