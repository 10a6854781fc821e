"""The built-in demo: a tiny Llama-style model and its datasets, built locally on first use."""
