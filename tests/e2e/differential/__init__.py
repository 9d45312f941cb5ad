"""Differential tests: the same segments to the real receiver (Linux + Postfix) and to the engine."""
