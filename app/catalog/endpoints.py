"""GET /api/v1/models: the image models, with their ratios, qualities and prices."""

from fastapi import APIRouter

from app.catalog.schemas import ModelList
from app.deps import RuntimeDep

router = APIRouter(prefix="/api/v1", tags=["models"])


@router.get("/models")
async def list_models(rt: RuntimeDep) -> ModelList:
    """The image models, with their ratios, qualities and prices (no key needed)."""
    return rt.catalog.listing()
