"""Helpers of ``benchmarks/line_rate.py``: the namespace bed, the SMTP sink, the load
generator, the SYN flood sender, the filters under test and /proc readers."""
