"""FID feature extraction: the Inception network over uint8 image batches, as ``metrics.features`` runs it.

The network resizes every image to 299 px, so its cost does not depend on the
sample resolution; the workloads feed 32 px images (the embedded default) and
256 px images (ImageNet) where asked. Beside the default layout, the same
network in channels-last memory format shows whether the convolutions gain
from it on this machine.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from vtp_bench.suite import Group, Settings, SkipGroup, Workload, count_parameters


@dataclass(frozen=True)
class FeatureSetting:
    name: str
    image_size: int
    batch_size: int
    description: str


FEATURE_SETTINGS = {
    "tiny": FeatureSetting("tiny", 32, 4, "32 px samples, batch 4"),
    "cpu": FeatureSetting("cpu", 32, 50, "32 px samples, batch 50 (metrics default)"),
    "gpu": FeatureSetting("gpu", 256, 250, "256 px samples, batch 250"),
}


def fid_features_group(name: str) -> Group:
    setting = FEATURE_SETTINGS[name]

    def build(settings: Settings) -> list[Workload]:
        from vtp_gen.pretrained.cache import WeightsNotFoundError
        from vtp_gen.pretrained.inception import build_fid_inception

        try:
            network = build_fid_inception(device=settings.device)
        except WeightsNotFoundError as missing:
            raise SkipGroup(f"no FID Inception weights ({str(missing).splitlines()[0]})") from None
        batch = settings.sized(setting.batch_size, 1)
        generator = torch.Generator().manual_seed(0)
        shape = (batch, 3, setting.image_size, setting.image_size)
        images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).to(settings.device)
        channels_last = copy.deepcopy(network).to(memory_format=torch.channels_last)
        images_cl = images.contiguous(memory_format=torch.channels_last)
        default_name = f"fid_features/{name}/inception"
        return [
            Workload(
                name=default_name,
                step=lambda: network(images),
                items=batch,
                tracked=(network,),
                params=count_parameters(network),
                notes="torch-fidelity inception-v3-compat, pool3, fp32, resize to 299 inside",
            ),
            Workload(
                name=f"fid_features/{name}/inception_channels_last",
                step=lambda: channels_last(images_cl),
                items=batch,
                baseline=default_name,
                compare="throughput",
                tracked=(channels_last,),
                params=count_parameters(channels_last),
                notes="same network and input in channels-last memory format",
            ),
        ]

    return Group(
        name=f"fid_features/{name}",
        description=f"FID Inception feature extraction ({setting.description})",
        build=build,
        tags=("fid_features", name),
    )
