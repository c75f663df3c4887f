"""``python -m pipeline.cli``: the same command as ``pipeline``."""

from pipeline.cli import main

main()
