"""The training subprocess. Imported only by ``python -m tuiwiz.train``: it pulls in torch."""
