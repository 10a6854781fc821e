"""A run: its folder and typed event log, the checks before it starts, its launch, following it, several processes."""
