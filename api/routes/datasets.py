"""``/v1/datasets``: the datasets a job may name, with the JSON schema of each one's params.

The API's own registry (:mod:`lrtune.registry`: built-ins and plugins installed beside it) and
what the live workers registered (a plugin installed only on the workers).

Example:
    >>> router.prefix, [route.path for route in router.routes]
    ('/datasets', ['/datasets'])
"""

from __future__ import annotations

from fastapi import APIRouter

from lrtune.api.deps import ReadAuth, StoreDep
from lrtune.api.routes._docs import error_responses
from lrtune.api.routes._registry import registry_list
from lrtune.api.schemas import RegistryList

router = APIRouter(prefix="/datasets", tags=["registry"])


@router.get("", summary="List datasets", responses=error_responses(401, 503))
def list_datasets(store: StoreDep, _: ReadAuth) -> RegistryList:
    """Every dataset name a job may use, and its params' JSON schema (null for a plugin)."""
    return registry_list("dataset", store.known_registry())
