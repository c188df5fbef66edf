"""``python -m streams worker ...``: the same commands as ``reelpulse streams``."""

from streams.cli import streams_app

streams_app(prog_name="python -m streams")
