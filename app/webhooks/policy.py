"""How deliveries are timed: the attempt timeout and the retry schedule (GIH_WEBHOOK_*).

GIH_WEBHOOK_ALLOW_PRIVATE lives with the other settings (`app.config`); these only tune the
schedule, and exist so that tests (and operators with special needs) need not wait hours.
"""

from datetime import datetime, timedelta
from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The contract's schedule: about 5 s, 1 min, 10 min, 1 h, 6 h, then every 6 h for 24 h.
DEFAULT_DELAYS = "5,60,600,3600,21600"
LEASE_MARGIN_S = 15.0


class DeliveryPolicy(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GIH_WEBHOOK_", extra="ignore")

    timeout_s: float = Field(15.0, gt=0, le=300)
    retry_delays_s: str = DEFAULT_DELAYS  # comma-separated; the last one repeats
    retry_window_s: float = Field(24 * 3600.0, gt=0)

    @field_validator("retry_delays_s")
    @classmethod
    def _delays_parse(cls, value: str) -> str:
        delays = [float(part) for part in value.split(",") if part.strip()]
        if not delays or any(delay <= 0 for delay in delays):
            raise ValueError("a comma-separated list of positive seconds, e.g. 5,60,600")
        return value

    @property
    def delays(self) -> list[float]:
        return [float(part) for part in self.retry_delays_s.split(",") if part.strip()]

    @property
    def lease_s(self) -> float:
        """How long a claimed attempt keeps the event to itself: longer than an attempt can
        take (the timeout covers name resolution and the POST; the margin, reading the event
        and recording the outcome), so two attempts never overlap; a worker that dies
        mid-attempt leaves the event to the sweep once the lease has passed."""
        return self.timeout_s + LEASE_MARGIN_S

    def next_attempt(self, attempts: int, created_at: datetime,
                     now: datetime) -> datetime | None:
        """When to try again after `attempts` failed tries, or None: given up (the window
        since the event was created has passed; the last try falls at its end)."""
        delays = self.delays
        delay = delays[min(attempts, len(delays)) - 1] if attempts > 0 else 0.0
        due = now + timedelta(seconds=delay)
        deadline = created_at + timedelta(seconds=self.retry_window_s)
        if due <= deadline:
            return due
        return deadline if deadline - now > timedelta(seconds=1) else None


@lru_cache
def get_policy() -> DeliveryPolicy:
    return DeliveryPolicy()
