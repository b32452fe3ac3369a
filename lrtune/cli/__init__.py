"""The ``lrtune`` command: ``find`` (range test), ``tune`` (schedule search), ``list``, and the
job store's ``db upgrade``, ``db prune``, ``submit``, ``status``, ``recommend``, ``cancel``,
``worker`` and ``workers``; ``serve``, the HTTP service.

``submit``, ``status``, ``recommend`` and ``cancel`` work on the job store (``--database``), or
through the HTTP API with ``--url`` (or ``LRTUNE_URL``), printing the same either way. Only
``submit``, ``worker``, ``serve`` and ``db upgrade`` create a job store that is not there.

Progress goes to stderr, answers to stdout (``--json`` for machines). Bad input ends with a
one-line ``lrtune: error: ...`` and exit status 2, never a traceback.

The package: :mod:`~lrtune.cli.parser` (the commands and their options),
:mod:`~lrtune.cli.local` (``find``, ``tune``, ``list``), :mod:`~lrtune.cli.jobs` (the job
commands, on the store or over HTTP), :mod:`~lrtune.cli.service` (``worker``, ``serve``),
:mod:`~lrtune.cli.render` (the text reports, ``serve``'s too) and :mod:`~lrtune.cli.errors`.
Torch, Optuna, SQLAlchemy and FastAPI are imported only inside the commands that use them, so
that ``lrtune list`` and ``--help`` answer at once.

Example:
    $ lrtune find --model mlp --dataset digits --seeds 4 --plot curve.png
    $ lrtune tune examples/digits_mlp.yaml --storage sqlite:///lrtune.db --plots out/
    $ lrtune submit examples/digits_mlp.yaml --url http://127.0.0.1:8765 --wait
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

import yaml
from pydantic import ValidationError

from lrtune.cli.errors import describe_invalid_job, describe_os_error, fail, first_line
from lrtune.cli.parser import build_parser
from lrtune.exceptions import LRTuneError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``lrtune`` command; return its exit status.

    The library's errors (:class:`~lrtune.exceptions.LRTuneError`), invalid job specs and the
    operating system's refusals (a missing, unreadable or misplaced file) end as one
    ``lrtune: error:`` line and exit status 2. Anything else is a bug in lrtune and keeps its
    traceback. A reader that closes stdout early (``lrtune status | head -1``) ends the
    command quietly, with the status a shell reports for a Unix tool stopped so (141).
    """
    try:
        try:
            return _main(argv)
        finally:  # --help too: a closed pipe shows here, not in the interpreter's last flush
            sys.stdout.flush()
    except BrokenPipeError:
        return _reader_left()


def _reader_left() -> int:
    """stdout's reader has gone: send what is still to be written nowhere (the interpreter
    flushes stdout at exit) and return 128 + SIGPIPE, as a shell reports a Unix tool that
    SIGPIPE stopped."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except ValidationError as exc:
        fail(describe_invalid_job(exc))
    except (LRTuneError, yaml.YAMLError) as exc:
        fail(first_line(exc))
    except BrokenPipeError:
        raise  # stdout's reader has gone: main() ends quietly
    except OSError as exc:
        fail(describe_os_error(exc))
    except KeyboardInterrupt:
        print("lrtune: interrupted", file=sys.stderr)
        return 130
