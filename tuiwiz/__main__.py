from tuiwiz.cli.main import run

run()
