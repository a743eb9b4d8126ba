"""Common-test-condition harness (``fcm_ctc``): evaluate codecs on a COCO-format set
with a split network and report rate (bpp) vs task accuracy (mAP), BD-rate against
anchors, near-lossless rates, stage times and kMAC/pixel.

Modules: ``config`` (YAML configs, validation), ``codecs`` (codec plugins:
image_anchor, feature_anchor, bypass, other container modes, uncompressed),
``runner`` (jobs, sqlite cache, local workers / Dask), ``complexity`` (MAC
counting), ``metrics`` (aggregation, BD tables), ``report`` (csv + report.html),
``cli`` (``fcm_ctc run`` / ``fcm_ctc report``); ``bd_rate`` and ``coco_eval``
hold the metric primitives.
"""
