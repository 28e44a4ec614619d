"""Data layer: image folders, image-text webdataset shards, the embedded Fashion-MNIST set."""
