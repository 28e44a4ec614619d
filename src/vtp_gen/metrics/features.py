"""Run a feature network (the FID Inception, or any stand-in) over an image set, in batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from vtp_gen.metrics.images import ImageSource, count_images, iter_image_batches

FeatureNetwork = Callable[[torch.Tensor], torch.Tensor]


def network_device(network) -> torch.device:
    """Device of a module's first parameter or buffer (CPU for plain functions)."""
    if isinstance(network, torch.nn.Module):
        for tensor in (*network.parameters(), *network.buffers()):
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(
    source: ImageSource,
    network: FeatureNetwork,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "features",
    max_images: int | None = None,
) -> np.ndarray:
    """uint8 images -> (N, D) float32 features, ``network`` applied to uint8 (B, 3, H, W) batches.

    ``device`` defaults to the network's; batches move there one at a time, so
    memory stays at one batch however large the set is. ``max_images`` stops
    early (FID-N on CPU).
    """
    device = torch.device(device) if device is not None else network_device(network)
    total = count_images(source)
    if max_images is not None:
        total = min(total, max_images) if total is not None else max_images
    chunks: list[np.ndarray] = []
    seen = 0
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in iter_image_batches(source, batch_size):
            if max_images is not None:
                batch = batch[: max_images - seen]
            features = network(batch.to(device))
            if features.ndim != 2 or features.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"feature network returned {tuple(features.shape)} for a batch of {batch.shape[0]}"
                )
            chunks.append(features.float().cpu().numpy())
            seen += batch.shape[0]
            bar.update(batch.shape[0])
            if max_images is not None and seen >= max_images:
                break
    if not chunks:
        raise ValueError("the image source is empty")
    return np.concatenate(chunks)
