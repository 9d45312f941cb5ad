"""Detectors: each looks at one aspect of a flow and names the rule that fired."""
