"""Datasets: reading files and hub datasets, sniffing their format, rendering examples as the model sees them."""
