"""FCM codec: split vision networks, feature container, feature codecs."""

__version__ = "0.1.0"
