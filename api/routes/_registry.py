"""The registry as the API lists it: each factory's name, origin and params schema.

Example:
    >>> entries = registry_list("model").data
    >>> [e.name for e in entries if e.builtin][:3]
    ['cnn', 'logreg', 'mlp']
    >>> sorted(entries[2].params_schema["properties"])
    ['activation', 'batchnorm', 'dropout', 'hidden']
"""

from __future__ import annotations

from typing import Literal

from lrtune import registry
from lrtune.api.schemas import RegistryEntry, RegistryList
from lrtune.jobs import PluginRegistry


def registry_list(
    kind: Literal["model", "dataset"], workers: PluginRegistry | None = None
) -> RegistryList:
    """The factories of ``kind`` this process knows (built-ins and installed plugins), and
    those only the live workers' registries hold (``workers``: a plugin installed on the
    workers alone, with the params schema the worker registered)."""
    if kind == "model":
        names, schema_of = registry.model_names(), registry.model_params_schema
    else:
        names, schema_of = registry.dataset_names(), registry.dataset_params_schema
    entries = []
    for name in names:
        schema = schema_of(name)
        entries.append(
            RegistryEntry(
                name=name,
                builtin=schema is not None,
                params_schema=schema.model_json_schema() if schema is not None else None,
            )
        )
    remote = {} if workers is None else workers.models if kind == "model" else workers.datasets
    entries += [
        RegistryEntry(name=name, builtin=False, params_schema=schema)
        for name, schema in remote.items()
        if name not in names
    ]
    entries.sort(key=lambda entry: entry.name)
    return RegistryList(data=entries, count=len(entries))
