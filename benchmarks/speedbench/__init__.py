"""The pieces of ``benchmarks/speed.py``: cases (what is measured), runners (one per toolkit), timing
(round-robin rounds, one case's rows) and report (tables, targets, files, plot)."""
