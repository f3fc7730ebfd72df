"""Thin DVC stage scripts: `python -m stages.<name> <dataset>`."""
