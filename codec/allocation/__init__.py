"""Bit allocation across the scales of a split point: MFIBA (multiscale feature
importance-based bit allocation, :mod:`codec.allocation.mfiba`) and rate control to a
target bpp, for modes that code every scale at its own quality (learned_ps)."""
