"""Experiment runners (``python -m simulations.<name>``) and their plots."""
