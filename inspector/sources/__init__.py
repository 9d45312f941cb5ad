"""Packet and event sources that feed the engine: captures, NFQUEUE, logs."""
