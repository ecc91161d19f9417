from livecc.cli import app

app(prog_name="livecc")
