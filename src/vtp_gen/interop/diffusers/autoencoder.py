"""``AutoencoderVTP``: the VTP tokenizer's encoder and pixel decoder as a diffusers model.

What it adds to ``VTPModel`` is the diffusers plumbing (``ConfigMixin`` config,
``save_pretrained`` / ``from_pretrained`` with safetensors, ``EncoderOutput`` /
``DecoderOutput``) and the latent statistics of the cache the generator was
trained on, so that a folder on its own knows how to turn generator samples
into pixels.

Conventions (those of VTP, not of Stable Diffusion's VAE):

- images are (B, 3, H, W) in ImageNet mean/std space, in and out
  (``vtp_gen.data.transforms.normalize`` / ``denormalize`` convert to and from [0, 1]);
- ``encode`` returns the raw latents, the official ``get_reconstruction_latents``;
  ``decode`` takes raw latents, the official ``get_latents_decoded_images``;
- the generator works on standardised latents ``(z - mean_c) / std_c * multiplier``:
  ``normalize_latents`` / ``denormalize_latents`` convert, with the per-channel
  ``latents_mean`` / ``latents_std`` held in the config (diffusers' Wan VAE
  keeps its statistics under the same names).

The weights keep the official tensor names (``trunk.*``, ``pixel_decoder.*``).
The CLIP towers are left out: they play no part in generation.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from vtp_gen.latents.dataset import LatentStats
from vtp_gen.models.tokenizer.config import HF_METADATA_KEYS, VTPConfig
from vtp_gen.models.tokenizer.model import VTPModel

# The parts of a VTPModel that encode and decode; everything else (CLIP towers) is not exported.
EXPORTED_PARTS = ("trunk", "pixel_decoder")


def generation_config(config: VTPConfig) -> VTPConfig:
    """The tokenizer config without the CLIP towers; refuses a tokenizer that cannot decode."""
    if not config.train_reconstruction:
        raise ValueError("this tokenizer has no pixel decoder (train_reconstruction=False): it cannot decode")
    return config.replace(train_clip=False)


def vtp_config_dict(config: VTPConfig) -> dict:
    """The VTPConfig keys (official names, no Hugging Face bookkeeping) as stored in our config."""
    return {k: v for k, v in config.to_dict().items() if k not in HF_METADATA_KEYS}


class AutoencoderVTP(ModelMixin, ConfigMixin):
    """VTP tokenizer (encoder + bottleneck, pixel decoder) with the latent statistics of its generator.

    Args:
        vtp_config: the tokenizer's ``VTPConfig`` keys (official names); None is VTP-B-f16d64.
            The CLIP towers are never built (``train_clip`` is forced off).
        latents_mean, latents_std: per-channel statistics of the latents the generator was
            trained on (None: identity, i.e. the generator models raw latents).
        latent_multiplier: the factor applied after standardisation in training (VTP: 1.0).
    """

    @register_to_config
    def __init__(
        self,
        vtp_config: dict | None = None,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        latent_multiplier: float = 1.0,
    ):
        super().__init__()
        config = generation_config(VTPConfig.from_dict(dict(vtp_config or {})))
        channels = config.latent_channels
        if (latents_mean is None) != (latents_std is None):
            raise ValueError("give both latents_mean and latents_std, or neither")
        mean = (
            torch.zeros(channels) if latents_mean is None else torch.tensor(latents_mean, dtype=torch.float32)
        )
        std = torch.ones(channels) if latents_std is None else torch.tensor(latents_std, dtype=torch.float32)
        if mean.shape != (channels,) or std.shape != (channels,):
            raise ValueError(
                f"latents_mean / latents_std need {channels} values (one per latent channel), "
                f"got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if not bool((std > 0).all()):
            raise ValueError("latents_std must be positive")
        if latent_multiplier <= 0:
            raise ValueError("latent_multiplier must be positive")
        self.tokenizer_config = config
        # Built by VTPModel's own constructor so the architecture mapping lives in one place;
        # only the parts that encode and decode are kept, under their official names.
        model = VTPModel(config)
        self.trunk = model.trunk
        self.pixel_decoder = model.pixel_decoder
        # Statistics live in the config (they are the cache's, not learned); kept off the state dict.
        self.latent_stats = LatentStats(
            mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), float(latent_multiplier)
        )

    # ---------------------------------------------------------------- building
    @classmethod
    def from_vtp(cls, model: VTPModel, stats: LatentStats | None = None) -> AutoencoderVTP:
        """Wrap a trained ``VTPModel`` (weights copied) with the statistics of the generator's latent cache."""
        config = generation_config(model.config)
        mean = std = None
        multiplier = 1.0
        if stats is not None:
            mean, std = stats.mean.flatten().tolist(), stats.std.flatten().tolist()
            multiplier = stats.multiplier
        autoencoder = cls(vtp_config_dict(config), mean, std, multiplier)
        source = model.state_dict()
        state = {k: v for k, v in source.items() if k.split(".", 1)[0] in EXPORTED_PARTS}
        autoencoder.load_state_dict(state, strict=True)
        autoencoder.to(next(model.parameters()).device)
        return autoencoder.eval()

    def to_vtp(self) -> VTPModel:
        """A ``VTPModel`` sharing these weights (official API; save it with ``vtp_gen.save_pretrained``)."""
        with torch.device("meta"):
            model = VTPModel(self.tokenizer_config)
        model.trunk, model.pixel_decoder = self.trunk, self.pixel_decoder
        return model.train(self.training)

    # ------------------------------------------------------------ properties
    @property
    def latent_channels(self) -> int:
        return self.tokenizer_config.latent_channels

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent position along each side (the patch size: 16 for the released models)."""
        return self.tokenizer_config.vision_patch_size

    # ----------------------------------------------------------------- API
    def encode(self, images: Tensor, return_dict: bool = True) -> EncoderOutput | tuple[Tensor]:
        """Images (B, 3, H, W), ImageNet-normalised -> raw latents (B, C, H/p, W/p)."""
        latents = self.trunk.encode_latents(images)
        return EncoderOutput(latent=latents) if return_dict else (latents,)

    def decode(self, latents: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        """Raw latents (B, C, h, w) -> images (B, 3, h*p, w*p), ImageNet-normalised (not clamped)."""
        images = self.pixel_decoder(latents)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        """Reconstruction: ``decode(encode(sample))``."""
        return self.decode(self.encode(sample, return_dict=False)[0], return_dict=return_dict)

    def normalize_latents(self, latents: Tensor) -> Tensor:
        """Raw latents -> the generator's space, ``(z - mean_c) / std_c * multiplier``."""
        return self.latent_stats.normalize(latents)

    def denormalize_latents(self, latents: Tensor) -> Tensor:
        """The generator's space -> raw latents, what ``decode`` takes."""
        return self.latent_stats.denormalize(latents)
