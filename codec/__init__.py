"""FCM codec: split vision networks, feature container, feature codecs.

The Python API (`codec.api`), importable without loading torch:

* ``codec.encode(image, mode=..., **params)``: an image (file or RGB array) -> an FCM container;
* ``codec.decode(container)``: container bytes or file -> reconstructed features;
* ``codec.run_task(decoded)``: NN part 2 on them -> detections;
* ``codec.load_network(name)``: a split network, loaded once per process.

See the README's "API" section for examples.
"""

from codec.api import decode, encode, image_id_from_name, image_info_for, load_network, run_task

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "decode",
    "encode",
    "image_id_from_name",
    "image_info_for",
    "load_network",
    "run_task",
]
