"""Sampling: a trained generator into a PNG folder and an ADM ``.npz`` (``make sample``)."""
