"""Standard Webhooks v1 signatures, with per-user secrets that are never stored.

A user's secret is `whsec_` + base64 of HMAC-SHA256(server secret, "webhook:{user}:{salt}"):
the database keeps only the salt, so a dump of it signs nothing. Signing is the
`standardwebhooks` package's own (what receivers verify with).
"""

import base64
import hashlib
import hmac
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"


def derive_secret(server_secret: bytes, user_id: str, salt: str) -> str:
    """The user's signing secret for this salt: 32 bytes, as a receiver configures it."""
    key = hmac.new(server_secret, f"webhook:{user_id}:{salt}".encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(key).decode()


def signature_header(secrets: list[str], event_id: str, at: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per live secret, space-separated."""
    return " ".join(Webhook(secret).sign(event_id, at, body) for secret in secrets)


def headers(secrets: list[str], event_id: str, at: datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers of one delivery attempt (`at`: whole seconds)."""
    at = at.astimezone(UTC).replace(microsecond=0)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature_header(secrets, event_id, at, body),
    }
