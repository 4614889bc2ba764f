"""``python -m transferkit.cli``: the same command as the ``transferkit`` script."""

from transferkit.cli import app

app()
