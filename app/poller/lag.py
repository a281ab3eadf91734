"""How far the checkpoint trails real time, and the loud warning when Auth0 may soon delete logs
the poller has not read."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from app.auth0 import management
from app.config import Settings
from app.poller.result import PassResult

log = logging.getLogger(__name__)


def check_lag(settings: Settings, result: PassResult) -> None:
    """Warn loudly when the checkpoint trails real time by LAG_WARN_SHARE of LOG_RETENTION_DAYS."""
    checkpoint_at = management.date_of_log_id(result.checkpoint)
    if result.caught_up or checkpoint_at is None:
        return
    lag = datetime.now(UTC) - checkpoint_at
    limit = settings.poller_lag_limit
    if lag > limit:
        warning = (
            f"the checkpoint trails real time by {_days(lag)} days, more than {settings.lag_warn_share:g} of "
            f"the {settings.log_retention_days}-day log retention: Auth0 deletes older logs for good"
        )
        log.error("poller lags behind", extra={"lag_seconds": int(lag.total_seconds())})
        result.warnings.append(warning)
        result.alert = True


def _days(lag: timedelta) -> str:
    return f"{lag.total_seconds() / 86400:.1f}"
