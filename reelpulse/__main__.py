from reelpulse.cli import app

app(prog_name="reelpulse")
