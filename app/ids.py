"""Random identifiers and secrets from a base62 alphabet."""

import secrets
import string

BASE62 = string.ascii_letters + string.digits


def random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    """Public ids such as gen_..., img_..., key_...: unguessable, so they double as capabilities."""
    return f"{prefix}_{random_base62(length)}"
