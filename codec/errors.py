"""Error classes of the codec. Every failure a user can cause (a bad bitstream,
a bad input file, a bad parameter) is one of these, with a one-line message;
the applications map them to exit codes in one place (codec/apps/_cli.py)."""

from __future__ import annotations


class FcmError(Exception):
    """Root of all errors raised on purpose by the codec library."""


# -- bitstream (decoder side) -------------------------------------------------


class BitstreamError(FcmError):
    """The bitstream cannot be decoded (by this decoder)."""


class BadMagicError(BitstreamError):
    """The data does not start with the container magic bytes."""


class UnsupportedVersionError(BitstreamError):
    """version_major is not one this decoder implements."""


class TruncatedError(BitstreamError):
    """The data ends before a syntax structure is complete."""


class TrailingDataError(BitstreamError):
    """There are bytes after the last payload unit."""


class HeaderCrcError(BitstreamError):
    """header_crc32 does not match the header bytes."""


class PayloadCrcError(BitstreamError):
    """unit_crc32 of a payload unit does not match its bytes."""


class SizeLimitError(BitstreamError):
    """A size in the header is outside the limits of bitstream conformance."""


class UnknownIdError(BitstreamError):
    """An id (network, resize mode, inner codec, preset, ...) has a reserved value."""


class UnknownModeError(UnknownIdError):
    """mode_id has a reserved value."""


class UnsupportedModeError(BitstreamError):
    """mode_id is defined but this decoder does not implement the mode."""


class UnknownUnitError(BitstreamError):
    """A required payload unit has a type this decoder does not know."""


class MalformedError(BitstreamError):
    """The bitstream violates a semantic constraint (inconsistent fields, wrong payload size, ...)."""


class InnerCodecError(BitstreamError):
    """The inner codec (VVC) could not decode its payload."""


class NetworkMismatchError(BitstreamError):
    """The bitstream was produced for another network or split point."""


class WeightsMismatchError(BitstreamError):
    """The decoder's network weights differ from the encoder's (weights hash)."""


class CodecModelMismatchError(WeightsMismatchError):
    """The decoder's codec-model weights differ from the encoder's (codec_model_hash)."""


# -- codec models (both sides) ----------------------------------------------------------


class CodecModelError(FcmError):
    """A codec-model weights file is missing, unreadable, has no record, or does not match
    the sha256 of its record (codec/models/registry.py)."""


# -- inputs and parameters (encoder side, applications) ---------------------------


class InputError(FcmError):
    """An input file is missing or unreadable (image, bitstream)."""


class OutputError(FcmError):
    """An output file cannot be written: its folder is missing, the path is a folder, the
    folder is not writable, or writing failed (the message names the user's path)."""


class OutputExistsError(OutputError):
    """An output file exists and overwriting was not requested."""


class EncodeError(FcmError):
    """Encoding parameters or features are invalid (unknown mode, non-finite features, ...)."""
