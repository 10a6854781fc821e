"""Planning a run before it starts: hardware, model inspection (no weights loaded), memory estimate, recommendation."""
