"""Flower ClientApp of fedunlearn: thin adapters from messages to ``fedunlearn.site``."""
