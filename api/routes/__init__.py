"""The API's routers, one per resource, each mounted under ``/v1`` by :func:`lrtune.api.create_app`.

- :mod:`.jobs`: ``/v1/jobs`` (submit, list, get, cancel, delete, events, recommendation);
- :mod:`.recommendations`: ``/v1/recommendations`` ("what LR should I use");
- :mod:`.models` and :mod:`.datasets`: the registry with each factory's params schema;
- :mod:`.schedules`: ``/v1/schedules/preview``;
- :mod:`.workers`: ``/v1/workers``, the workers and what each holds;
- :mod:`.health`: ``/healthz`` and ``/readyz`` (not versioned: they are for orchestrators);
- :mod:`.dashboard`: the dashboard's pages; :mod:`.optuna_dashboard`: optuna-dashboard at
  ``/dashboard``, behind the token (both unversioned, outside the OpenAPI schema).

Example:
    >>> from lrtune.api.routes import jobs
    >>> jobs.router.prefix
    '/jobs'
"""
