"""Flower ServerApp of fedunlearn: strategy, main loop and unlearning phases."""
