"""The model catalog: the operator-editable JSON file (the shipped catalog.json, or
GIH_CATALOG_PATH), loaded once and checked by the same `Model` that GET /models returns."""

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError

from app.catalog.schemas import Model, ModelList
from app.catalog.sizes import CatalogError

DEFAULT_CATALOG_PATH = Path(__file__).with_name("catalog.json")


class Catalog:
    """Models by id, in file order."""

    def __init__(self, models: Iterable[Model]) -> None:
        self._models = {m.id: m for m in models}

    def get(self, model_id: str) -> Model | None:
        return self._models.get(model_id)

    def models(self) -> list[Model]:
        return list(self._models.values())

    def listing(self) -> ModelList:
        return ModelList(data=self.models())

    @property
    def max_reference_images(self) -> int:
        return max(m.reference_image_limit for m in self._models.values())


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load and validate a catalog file (None: the shipped catalog.json)."""
    path = Path(path) if path is not None else DEFAULT_CATALOG_PATH
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"catalog {path}: cannot read file: {exc}") from exc
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise CatalogError(f"catalog {path}: invalid JSON at {where}: {exc.msg}") from exc
    entries = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f'catalog {path}: expected {{"models": [...]}} with at least one model')
    models: dict[str, Model] = {}
    for index, entry in enumerate(entries, start=1):
        where = f"catalog {path}: model #{index}"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: must be a JSON object")
        if isinstance(entry.get("id"), str):
            where = f"{where} ({entry['id']})"
        try:
            model = Model.model_validate(entry)
        except ValidationError as exc:
            raise CatalogError(f"{where}: {describe(exc)}") from None
        if model.id in models:
            raise CatalogError(f"catalog {path}: duplicate model id {model.id!r}")
        models[model.id] = model
    return Catalog(models.values())


def describe(exc: ValidationError) -> str:
    """Pydantic's first problem, as an operator reads it: the field, then what is wrong."""
    error = exc.errors()[0]
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "missing field"
    elif error["type"] == "extra_forbidden":
        message = "unknown field"
    field = ".".join(str(part) for part in error["loc"])
    return f"{field!r}: {message}" if field else message
