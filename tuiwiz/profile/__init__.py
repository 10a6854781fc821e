"""The profile: every choice of a run, as a versioned pydantic schema read from YAML with line numbers."""
