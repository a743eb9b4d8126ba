"""The training programme shared by the learned feature codecs (learned_e2e's
FENet/DRNet and vvc_msff's MSFF/MSFR).

* :mod:`codec.training.data`: the training images, the NN part 1 feature cache
  (float16 memmaps, extracted once), aligned random crops, normalisation
  statistics and PCA of the cache.
* :mod:`codec.training.task`: the task-aware distortion, the frozen NN part 2
  heads' outputs on reconstructed against original features.
* :mod:`codec.training.dev`: the dev sets (held-out training images with
  pseudo-labels, or a labelled COCO set) and their evaluation through the real
  container path.
* :mod:`codec.training.loop`: resumable checkpoints (weights, optimisers,
  schedule, data position), a log line a minute, keep-the-best.

The scripts under ``tools/`` (``train_fenet``, ``train_msff``) are thin entry points.
"""
