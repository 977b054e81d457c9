"""Passwords: argon2id through pwdlib, hashed and checked off the event loop (each costs tens of
milliseconds of CPU by design)."""

import asyncio

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

MIN_LENGTH = 10
MAX_LENGTH = 1024  # argon2 takes any length; a megabyte "password" is only a way to burn CPU

_hasher = PasswordHash((Argon2Hasher(),))
# Checked against when the email is unknown, so that "no such user" takes as long as "wrong
# password" and the two cannot be told apart by timing.
_DUMMY_HASH = _hasher.hash("not-a-password-of-anyone")


class WeakPassword(ValueError):
    """A password the rules refuse; the message says which rule."""


def check_rules(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"the password must be at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"the password must be at most {MAX_LENGTH} characters")
    if not password.strip():
        raise WeakPassword("the password must not be only spaces")


def hash_password(password: str) -> str:
    check_rules(password)
    return _hasher.hash(password)


async def hash_password_async(password: str) -> str:
    check_rules(password)
    return await asyncio.to_thread(_hasher.hash, password)


async def verify(password: str, password_hash: str | None) -> bool:
    """Whether `password` matches; with no hash (an unknown user, or one who has no password
    yet) the work is done all the same and the answer is False."""
    if len(password) > MAX_LENGTH:
        return False
    target = password_hash or _DUMMY_HASH
    ok = await asyncio.to_thread(_hasher.verify, password, target)
    return bool(ok) and password_hash is not None
