"""Sweeps: many runs of recipes over a grid of settings and seeds, launched, tracked and reported."""
