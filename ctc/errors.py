"""Error classes of the CTC harness; each carries a one-line message that
`fcm_ctc` prints before exiting with status 2."""

from __future__ import annotations


class CtcError(Exception):
    """Root of the errors the CTC harness raises on purpose."""


class ConfigError(CtcError):
    """A CTC configuration file is missing, malformed or inconsistent."""


class DatasetError(CtcError):
    """The dataset (images, annotations) named by a configuration cannot be used."""


class JobError(CtcError):
    """A (codec, rate point, image) job failed; the message names the job."""


class CacheError(CtcError):
    """The result cache of a run directory cannot be used."""


class RunDirError(CtcError):
    """A run directory (--out) holds another config's run, or files that are no run."""
