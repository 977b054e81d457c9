"""One Settings object, read from GIH_* environment variables (and standard OpenAI/AWS ones)."""

import logging
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("gih")

DATA_DIR = Path("data")
DEFAULT_DATABASE_URL = f"sqlite:///{DATA_DIR}/gih.db"
SECRET_FILE = "secret.key"
MIN_SECRET_LENGTH = 32
PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev", "development"}


class ConfigError(Exception):
    """Settings that cannot run; the message names every problem at once."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GIH_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    public_base_url: str | None = None
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    queue_name: str = "arq:queue"
    storage: Literal["local", "s3"] = "local"
    local_storage_dir: Path = DATA_DIR / "images"
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_public_base_url: str | None = None
    s3_presign_endpoint_url: str | None = None
    s3_path_style: bool = True
    s3_create_bucket: bool = True
    s3_presign_ttl_s: int = Field(3600, ge=60, le=7 * 24 * 3600)
    provider: Literal["openai", "mock"] | None = None
    secret_key: str | None = None
    sync_timeout_s: float = Field(800.0, gt=0)
    openai_wait_s: float = Field(570.0, gt=0)
    webhook_allow_private: bool = False
    rate_limit_per_min: int | None = Field(None, ge=1)
    max_concurrent_generations: int | None = Field(None, ge=1)
    catalog_path: Path | None = None
    max_reference_image_bytes: int = Field(50 * 1024 * 1024, gt=0)
    provider_timeout_s: float = Field(180.0, gt=0)
    provider_max_retries: int = Field(2, ge=0, le=10)
    job_timeout_s: float = Field(600.0, ge=30)
    stale_after_s: float = Field(45.0, ge=1)
    sweep_interval_s: float = Field(15.0, gt=0)
    generation_deadline_s: float = Field(1800.0, ge=60)
    job_concurrency: int = Field(32, ge=1, le=1000)
    worker_poll_s: float = Field(0.05, gt=0, le=5)
    shutdown_grace_s: float = Field(30.0, ge=0)
    http_read_timeout_s: float = Field(30.0, gt=0)
    http_body_min_rate: float = Field(1024.0, ge=0)
    db_pool_size: int = Field(10, ge=1)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    log_prompts: bool = False
    worker_metrics_port: int = Field(9091, ge=0, le=65535)
    # The console's sign-up page: None means open in the embedded default, closed otherwise.
    signup: Literal["open", "closed"] | None = None
    signup_credits: int = Field(0, ge=0, le=1_000_000_000)

    @field_validator("public_base_url", "redis_url", "s3_bucket", "s3_endpoint_url",
                     "s3_public_base_url", "s3_presign_endpoint_url", "secret_key", "catalog_path",
                     "provider", "rate_limit_per_min", "max_concurrent_generations",
                     "signup", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """No external dependency configured: SQLite, in-process jobs, local disk."""
        return self.is_sqlite and self.redis_url is None and self.storage == "local"

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def signup_open(self) -> bool:
        """Whether anyone may create an account in the console (GIH_SIGNUP)."""
        return self.embedded if self.signup is None else self.signup == "open"

    @property
    def secure_cookies(self) -> bool:
        """Cookies are `Secure` when the server is reached over https."""
        return self.base_url.startswith("https://")

    @property
    def provider_name(self) -> str:
        if self.provider:
            return self.provider
        return "openai" if os.environ.get("OPENAI_API_KEY") else "mock"

    @property
    def async_database_url(self) -> str:
        return async_url(self.database_url)

    def problems(self) -> list[str]:
        """Everything that makes these settings unfit to serve, for one clear start-up error."""
        found = []
        if not self.embedded:
            if self.secret_key is None or self.secret_key.strip().lower() in PLACEHOLDER_SECRETS:
                found.append("GIH_SECRET_KEY must be set outside the embedded default; make one "
                             "with: python -c 'import secrets; print(secrets.token_urlsafe(48))'")
            elif len(self.secret_key) < MIN_SECRET_LENGTH:
                found.append(f"GIH_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters")
        if self.storage == "s3" and not self.s3_bucket:
            found.append("GIH_S3_BUCKET is required when GIH_STORAGE=s3")
        if self.provider_name == "openai" and not os.environ.get("OPENAI_API_KEY"):
            found.append("OPENAI_API_KEY is required when GIH_PROVIDER=openai")
        if self.catalog_path is not None and not self.catalog_path.is_file():
            found.append(f"GIH_CATALOG_PATH {self.catalog_path} is not a readable file")
        if not (self.is_sqlite or self.database_url.startswith(("postgres://", "postgresql"))):
            found.append("GIH_DATABASE_URL must start with postgresql:// or sqlite:///")
        return found

    def check(self) -> None:
        found = self.problems()
        if found:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(found))

    def hashing_secret(self) -> bytes:
        """The HMAC key for API keys. Embedded mode keeps a random one beside its database."""
        if self.secret_key:
            return self.secret_key.encode()
        if not self.embedded:
            raise ConfigError("GIH_SECRET_KEY must be set outside the embedded default")
        return embedded_secret(self.database_url).encode()


def async_url(url: str) -> str:
    """Accept the plain schemes operators write and imply the async driver."""
    for plain in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain):]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url


def sqlite_path(url: str) -> Path | None:
    for prefix in ("sqlite:///", "sqlite+aiosqlite:///"):
        if url.startswith(prefix):
            return Path(url[len(prefix):])
    return None


def private_dir(folder: Path) -> None:
    """Create `folder` (and its parents) readable by its owner only."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)


def secure_sqlite_file(path: Path) -> None:
    """The database holds emails, prompts and key hashes: a new one is created 0600 in a 0700
    folder (SQLite gives its -wal and -shm files the database file's mode)."""
    if not path.parent.exists():
        private_dir(path.parent)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def embedded_secret(database_url: str) -> str:
    """Create once, then reuse, a random secret stored next to the SQLite database."""
    db_path = sqlite_path(database_url)
    folder = db_path.parent if db_path else DATA_DIR
    path = folder / SECRET_FILE
    if not path.exists():
        private_dir(folder)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
        try:  # link() fails if another process won the race; then theirs is used
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


@lru_cache
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [f"GIH_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                 for e in exc.errors()]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines)) from None
