"""The `tuiwiz` command: argument parsing and one function a command, each importing only what it needs."""
