"""Where images live: local disk (served by the API) or an S3-compatible bucket."""

from app.config import Settings
from app.storage.base import Storage


def create_storage(settings: Settings) -> Storage:
    if settings.storage == "s3":
        from app.storage.s3 import S3Storage

        return S3Storage(settings)
    from app.storage.local import LocalStorage

    return LocalStorage(settings.local_storage_dir, settings.base_url)
