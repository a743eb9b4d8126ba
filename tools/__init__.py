"""Command-line tools (conversion, training, benchmarks, conformance vectors), run as
modules from the repository root: ``python -m tools.make_conformance --help``."""
