"""lrtune's HTTP API (installed as ``lrtune.api`` from the repo's ``api/`` folder).

FastAPI, versioned under ``/v1``, laid out like FastAPI's full-stack template:

- :mod:`lrtune.api.main`: :func:`create_app`, the one constructor;
- :mod:`lrtune.api.config`: :class:`ApiSettings`, the service's one settings class
  (``LRTUNE_*``: the job store's fields plus the API's);
- :mod:`lrtune.api.deps`: the routes' dependencies as ``Annotated`` aliases (``StoreDep``,
  ``SettingsDep``, ``WriteAuth``, ``ReadAuth``);
- :mod:`lrtune.api.routes`: one router per resource;
- :mod:`lrtune.api.errors`: lrtune's exceptions as HTTP statuses, in one place;
- :mod:`lrtune.api.schemas`: the few shapes that exist because of HTTP; everything else is
  served as the library's own models.

Importing it loads neither torch nor Optuna.

Example:
    >>> import tempfile, pathlib
    >>> from lrtune.api import ApiSettings, create_app
    >>> url = f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}"
    >>> create_app(ApiSettings(database_url=url)).title
    'lrtune'
"""

from lrtune.api.config import ApiSettings
from lrtune.api.main import create_app

__all__ = ["ApiSettings", "create_app"]
