"""Common-test-condition harness (``fcm_ctc``): evaluate codecs on a COCO-format set
with a split network and report rate (bpp) vs task accuracy (mAP), BD-rate against
anchors, near-lossless rates, stage times and kMAC/pixel.

Modules: ``config`` (YAML configs, validation), ``codecs`` (codec plugins:
image_anchor, feature_anchor, bypass, other container modes, uncompressed),
``runner`` (jobs, local workers / Dask), ``cache`` (the sqlite result cache),
``dependencies`` (what a result depends on: the files its job ran, package versions),
``complexity`` (MAC counting), ``metrics`` (aggregation, BD tables), ``report`` (csv +
report.html), ``tables`` (Markdown), ``cli`` (``fcm_ctc run`` / ``report`` / ``tables`` /
``configs``); ``bd_rate`` (BD-rate, MPEG's monotone fit, overlap and plausibility) and
``coco_eval`` hold the metric primitives; ``configs`` the bundled configurations.
"""
