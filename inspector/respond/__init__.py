"""Responders: what is done to the world after a verdict (resets, bans)."""
