"""``python -m lrtune.cli``: the ``lrtune`` command (``lrtune serve`` starts its workers so)."""

from lrtune.cli import main

raise SystemExit(main())
