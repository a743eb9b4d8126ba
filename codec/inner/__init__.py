"""Inner codecs used by the coding modes.

``codec.inner.vvc``: VVC (H.266) through ffmpeg (libvvenc encoder, native vvc decoder) for 10-bit
luma planes of packed features and for the RGB image anchor, plus an Annex-B NAL unit parser.
"""
