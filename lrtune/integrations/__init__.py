"""Tasks from the frameworks users train with: :mod:`lrtune.integrations.lightning`
(``pip install lrtune[lightning]``) and :mod:`lrtune.integrations.hf` (``lrtune[hf]``).

Each module imports its framework when imported itself; ``import lrtune`` never does.
"""
