"""The service's settings: the job store's, plus what the HTTP API adds; read from the environment.

One :class:`ApiSettings` class for the service: it extends the job store's
(:class:`lrtune.jobs.settings.StoreSettings`: ``LRTUNE_DATABASE_URL``, pool sizes, attempts) with
the API's fields, so that the API, the store it opens and the workers read one set of
``LRTUNE_*`` variables. Nothing else in the API reads the environment.

- ``LRTUNE_API_TOKEN``: when set, write endpoints need ``Authorization: Bearer <token>``
  (and reads too when ``LRTUNE_API_TOKEN_FOR_READS`` is true). Bound to a non-loopback
  ``LRTUNE_HOST``, the app refuses to start without it, and reads need it too
  (:meth:`ApiSettings.bound`, which :func:`~lrtune.api.main.create_app` applies). A
  :class:`~pydantic.SecretStr`, so it never shows in a ``repr``, a log line or an error
  message.
- ``LRTUNE_MAX_BODY_BYTES``: request bodies above it are refused with 413.
- ``LRTUNE_MAX_UPLOAD_BYTES``: the cap of a dataset upload's body (``POST /v1/datasets``), and
  of its arrays once decoded; above it, 413 (or 422 for arrays that decode larger).
- ``LRTUNE_HOST``/``LRTUNE_PORT``: where ``uvicorn`` binds (loopback by default).
- ``LRTUNE_ALLOWED_HOSTS``: the host names a request's ``Host`` header may carry, comma
  separated (``*.example.com`` matches a suffix, ``*`` any); unset: bound to loopback, the
  loopback names and the bind address (so a DNS-rebound name is refused), else any (a
  non-loopback bind needs the token). :meth:`ApiSettings.trusted_hosts`.
- ``LRTUNE_OPTUNA_DASHBOARD``: serve optuna-dashboard at ``/dashboard`` over the jobs'
  studies, behind the token (:mod:`lrtune.api.routes.optuna_dashboard`); true by default.
- ``LRTUNE_SSE_POLL_S``/``LRTUNE_SSE_PING_S``: how often an event stream reads the store for
  new events, and how often it sends a keep-alive comment.
- ``LRTUNE_ANSWER_TTL_S``: how long ``GET /v1/recommendations`` and a finished range test's
  ``/v1/jobs/{id}/finder`` reuse the answer they found before they ask the store again (0:
  every time).

Example:
    >>> import os
    >>> settings = ApiSettings()
    >>> settings.api_token is None, settings.max_body_bytes, settings.host
    (True, 1048576, '127.0.0.1')
    >>> os.environ["LRTUNE_API_TOKEN"] = "s3cret"
    >>> settings = ApiSettings.from_env()
    >>> settings.api_token.get_secret_value(), "s3cret" in repr(settings)
    ('s3cret', False)
    >>> del os.environ["LRTUNE_API_TOKEN"]
    >>> os.environ["LRTUNE_MAX_QUEUED_JOBS"] = "0"
    >>> ApiSettings.from_env()
    Traceback (most recent call last):
    ...
    lrtune.exceptions.InvalidInputError: invalid settings: LRTUNE_MAX_QUEUED_JOBS='0': Input \
should be greater than or equal to 1
    >>> del os.environ["LRTUNE_MAX_QUEUED_JOBS"]
    >>> ApiSettings().trusted_hosts()
    ['127.0.0.1', '[::1]', 'localhost']
    >>> os.environ["LRTUNE_ALLOWED_HOSTS"] = "lrtune.example.com, *.corp"
    >>> ApiSettings.from_env().trusted_hosts()
    ['lrtune.example.com', '*.corp']
    >>> del os.environ["LRTUNE_ALLOWED_HOSTS"]
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from lrtune.exceptions import InvalidInputError
from lrtune.jobs.settings import StoreSettings

__all__ = ["LOOPBACK_HOSTS", "ApiSettings", "check_bind", "is_loopback"]

LOOPBACK_HOSTS = ("127.0.0.1", "[::1]", "localhost")
"""The names a request to a loopback-bound API carries in ``Host`` (an IPv6 one bracketed)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this
    machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> bool:
    """Whether reads must need the token too (a non-loopback bind); raise if it is refused.

    Example:
        >>> check_bind("127.0.0.1", token=None)  # loopback: no token needed
        False
        >>> check_bind("0.0.0.0", token=None)
        Traceback (most recent call last):
        ...
        lrtune.exceptions.InvalidInputError: refusing to serve on 0.0.0.0 without a token: \
set LRTUNE_API_TOKEN (every request then needs 'Authorization: Bearer <token>'), or bind \
127.0.0.1
        >>> check_bind("0.0.0.0", token="s3cret")  # allowed, and reads need the token too
        True

    Raises:
        InvalidInputError: ``host`` is not a loopback address and no token is configured.
    """
    if is_loopback(host):
        return False
    if not token:
        raise InvalidInputError(
            f"refusing to serve on {host} without a token: set LRTUNE_API_TOKEN (every request "
            "then needs 'Authorization: Bearer <token>'), or bind 127.0.0.1"
        )
    return True


class ApiSettings(StoreSettings):
    """The job store's settings plus the HTTP API's (every field from ``LRTUNE_<FIELD>``)."""

    api_token: SecretStr | None = Field(
        None,
        description="bearer token that write endpoints require; unset: no auth (loopback use)",
    )
    api_token_for_reads: bool = Field(
        False, description="also require the token on read endpoints (a non-loopback bind)"
    )
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest request body accepted; larger ones get 413"
    )
    max_upload_bytes: int = Field(
        32 << 20,
        ge=1024,
        description="largest dataset upload accepted (the body, and its arrays decoded); "
        "larger ones get 413",
    )
    host: str = Field("127.0.0.1", min_length=1, description="address the API binds")
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="host names the Host header may carry, comma separated (*.example.com "
        "matches a suffix, * any); unset: bound to loopback, the loopback names and the bind "
        "address, else any",
    )
    port: int = Field(8000, ge=1, le=65535, description="port the API binds")
    optuna_dashboard: bool = Field(
        True, description="serve optuna-dashboard at /dashboard, behind the API's token"
    )
    sse_poll_s: float = Field(
        0.5, gt=0, le=60, description="seconds between an event stream's reads of the store"
    )
    sse_ping_s: float = Field(
        15.0, gt=0, le=300, description="seconds between an event stream's keep-alive comments"
    )
    answer_ttl_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="seconds GET /v1/recommendations and /v1/jobs/{id}/finder reuse an answer "
        "before they ask the store again (0: every time); a newer recommendation, or a job "
        "deleted through another API process, shows after at most this long",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, hosts: Any) -> Any:
        if isinstance(hosts, str):
            return [host.strip().lower() for host in hosts.split(",") if host.strip()]
        return hosts

    @field_validator("allowed_hosts")
    @classmethod
    def _some_host(cls, hosts: list[str] | None) -> list[str] | None:
        if hosts is not None and not hosts:
            raise ValueError("name at least one host (or * for any), or unset it")
        return hosts

    def bound(self) -> ApiSettings:
        """These settings as the app serves them on ``host`` (:func:`check_bind`): reads need
        the token too on a non-loopback bind.

        Raises:
            InvalidInputError: a non-loopback ``host`` and no ``api_token``.
        """
        token = self.api_token.get_secret_value() if self.api_token else None
        if check_bind(self.host, token) and not self.api_token_for_reads:
            return self.model_copy(update={"api_token_for_reads": True})
        return self

    def trusted_hosts(self) -> list[str]:
        """The host names a request's ``Host`` header may carry (see the module)."""
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        if not is_loopback(self.host):
            return ["*"]  # the token guards a non-loopback bind
        bound = f"[{self.host}]" if ":" in self.host else self.host.lower()
        return sorted({*LOOPBACK_HOSTS, bound})

    @field_validator("api_token")
    @classmethod
    def _non_empty_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and not token.get_secret_value().strip():
            raise ValueError("the API token must not be empty or blank: unset it or set a token")
        return token
