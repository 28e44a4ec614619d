"""Evaluation metrics, offline.

- :mod:`~vtp_gen.metrics.images`: image sets (uint8 tensors, NHWC arrays, folders, ADM .npz) as batches
- :mod:`~vtp_gen.metrics.features`: run a feature network (FID Inception or a stand-in) over a set
- :mod:`~vtp_gen.metrics.generation`: FID, KID, Inception Score, precision/recall; reference caching;
  :func:`~vtp_gen.metrics.generation.evaluate_generation`
- :mod:`~vtp_gen.metrics.domain`, :mod:`~vtp_gen.metrics.domain_eval`: the Fashion-MNIST garment judge,
  the Frechet distance in its features and label agreement, with intervals and real-vs-real floors
- :mod:`~vtp_gen.metrics.intervals`: bootstrap intervals and their combination over seeds
- :mod:`~vtp_gen.metrics.reference_cache`: reference features cached with their key and a checksum
- :mod:`~vtp_gen.metrics.reconstruction`: rFID, PSNR, SSIM, LPIPS over a dataset
- :mod:`~vtp_gen.metrics.linear_probe`: cached features, bottleneck and DINOv2-style linear probes
- :mod:`~vtp_gen.metrics.zero_shot`, :mod:`~vtp_gen.metrics.templates`: CLIP zero-shot classification

Weights for the Inception and LPIPS networks come from :mod:`vtp_gen.pretrained`.
"""
