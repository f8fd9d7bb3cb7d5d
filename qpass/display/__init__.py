"""What people see while qpass works (layer 0): progress.py (the one progress facility:
nested phases, rich bars on a terminal, rate-limited one-line records otherwise) and
units.py (fmt_bytes, the one size format)."""
