from mailops.cli import app

app(prog_name="mailops")
