"""Timing, memory, environment capture and the fresh-process probe."""
