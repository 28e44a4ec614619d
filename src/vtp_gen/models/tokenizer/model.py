"""VTPModel: the whole tokenizer (trunk + bottleneck, pixel decoder, CLIP towers), official API.

The ``get_*`` methods have the names, signatures and outputs of the official
``VTPModel`` (MiniMax-AI/VTP), so scripts written for it run unchanged on a
model loaded with ``vtp_gen.load_tokenizer``. The training-side API (per-call
drop-path rates, iBOT masks, any crop size) is on ``trunk`` and ``pixel_decoder``
and in ``encode_image`` / ``encode_text``.

State-dict names equal the official tensor names except that the text tower
lives under ``text.``; ``official_state_dict`` / ``load_official_state_dict``
translate (see ``text.OFFICIAL_TEXT_NAMES``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtp_gen.models.tokenizer.config import VTPConfig
from vtp_gen.models.tokenizer.decoder import PixelDecoder
from vtp_gen.models.tokenizer.encoder import EncoderFeatures, VisionEncoder
from vtp_gen.models.tokenizer.text import OFFICIAL_TEXT_NAMES, TextTower


class CheckpointMismatchError(ValueError):
    """A state dict whose tensor names or shapes do not fit the model built from its config."""


class VTPModel(nn.Module):
    def __init__(self, config: VTPConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = VisionEncoder(
            image_size=config.image_size,
            patch_size=config.vision_patch_size,
            embed_dim=config.vision_embed_dim,
            depth=config.vision_depth,
            num_heads=config.vision_num_heads,
            ffn_ratio=config.vision_mlp_ratio,
            ffn_layer=config.vision_ffn_layer,
            norm_layer=config.vision_norm_layer,
            layerscale_init=config.vision_init_values,
            use_qk_norm=config.vision_use_qk_norm,
            latent_channels=config.vision_feature_bottleneck,
            num_register_tokens=config.vision_num_register_tokens,
            rope_dtype=getattr(torch, config.rope_dtype),
        )
        if config.train_clip:
            # CLIP reads the full-width features unless the bottleneck is shared (ae_only = False).
            clip_in = (
                config.vision_embed_dim if config.vision_bottleneck_ae_only else self.trunk.latent_channels
            )
            self.visual_proj = nn.Linear(clip_in, config.text_embed_dim, bias=False)
            nn.init.trunc_normal_(self.visual_proj.weight, std=0.02)
            self.text = TextTower.from_config(config)
            shape = [1] if config.nonscalar_logit_scale else []
            init_scale = config.init_logit_scale or math.log(1 / 0.07)
            self.logit_scale = nn.Parameter(torch.full(shape, float(init_scale)))
            bias = config.init_logit_bias
            self.logit_bias = nn.Parameter(torch.full(shape, float(bias))) if bias is not None else None
        else:
            self.visual_proj = self.text = self.logit_scale = self.logit_bias = None
        if config.train_reconstruction:
            self.pixel_decoder = PixelDecoder(
                latent_channels=self.trunk.latent_channels,
                # Official models are f16 (PixelShuffle(16)); following the patch size lets small
                # CPU presets (patch 4) reconstruct at full resolution too.
                upscale_factor=config.vision_patch_size,
                embed_dim=config.decoder_embed_dim,
                depth=config.decoder_depth,
                num_heads=config.decoder_num_heads,
                # The official model leaves the decoder's FFN ratio at its default of 4.
                ffn_ratio=4.0,
                ffn_layer=config.decoder_ffn_layer,
                norm_layer=config.decoder_norm_layer,
                layerscale_init=config.decoder_init_values,
                use_qk_norm=config.decoder_use_qk_norm,
                rope_dtype=getattr(torch, config.rope_dtype),
            )
        else:
            self.pixel_decoder = None

    # ------------------------------------------------------------ helpers
    @property
    def text_transformer(self) -> nn.Module:
        """The text tower's block stack, under its official attribute name."""
        self._require_clip()
        return self.text.transformer

    def set_grad_checkpointing(self, enable: bool = True) -> VTPModel:
        """Recompute block activations in the backward (encoder, pixel decoder, text tower).

        Trades ~1 extra forward per step for activation memory that no longer grows with depth;
        weights and state_dict keys are unchanged, and eval / no-grad calls are unaffected.
        """
        self.trunk.grad_checkpointing = enable
        if self.pixel_decoder is not None:
            self.pixel_decoder.grad_checkpointing = enable
        if self.text is not None:
            self.text.transformer.grad_checkpointing = enable
        return self

    def _require_clip(self) -> None:
        if self.text is None:
            raise RuntimeError("CLIP not enabled. Set train_clip=True in config.")

    def _require_decoder(self) -> None:
        if self.pixel_decoder is None:
            raise RuntimeError("Reconstruction not enabled. Set train_reconstruction=True in config.")

    # ------------------------------------------------------- training API
    def clip_image_embedding(self, features: EncoderFeatures, normalize: bool = False) -> Tensor:
        """CLS (or mean patch token, ``vision_clip_feat='pooled'``) -> visual_proj -> (B, clip_dim)."""
        self._require_clip()
        if not self.config.vision_bottleneck_ae_only:
            features = EncoderFeatures(
                self.trunk.bottleneck(features.cls_token), self.trunk.bottleneck(features.patch_tokens)
            )
        pooled = (
            features.cls_token if self.config.vision_clip_feat == "cls" else features.patch_tokens.mean(dim=1)
        )
        embedding = self.visual_proj(pooled)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def encode_image(
        self, images: Tensor, normalize: bool = False, drop_path_rate: float | None = None
    ) -> Tensor:
        """CLIP image embedding (B, clip_dim), with the CLIP forward's own drop-path rate."""
        return self.clip_image_embedding(
            self.trunk.encode_features(images, drop_path_rate=drop_path_rate), normalize
        )

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        """CLIP text embedding (B, clip_dim) from token ids (B, L)."""
        self._require_clip()
        embedding = self.text.encode(tokens)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def encode_latents(self, images: Tensor, drop_path_rate: float | None = None) -> Tensor:
        return self.trunk.encode_latents(images, drop_path_rate=drop_path_rate)

    def decode(self, latents: Tensor, drop_path_rate: float | None = None) -> Tensor:
        self._require_decoder()
        return self.pixel_decoder(latents, drop_path_rate=drop_path_rate)

    # ------------------------------------------------------- official API
    def get_last_layer_feature(self, image: Tensor, use_bottleneck: bool = False) -> dict[str, Tensor]:
        """{'cls_token': (B, D), 'patch_tokens': (B, N, D)}: final-norm features (bottlenecked on request)."""
        features = self.trunk.encode_features(image)
        if use_bottleneck:
            features = EncoderFeatures(
                self.trunk.bottleneck(features.cls_token), self.trunk.bottleneck(features.patch_tokens)
            )
        return {"cls_token": features.cls_token, "patch_tokens": features.patch_tokens}

    def get_intermediate_layers_feature(
        self,
        image: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        return self.trunk.get_intermediate_layers(
            image, n=n, reshape=reshape, return_class_token=return_class_token, norm=norm
        )

    def get_clip_image_feature(self, image: Tensor, normalize: bool = True) -> Tensor:
        return self.encode_image(image, normalize=normalize)

    def get_clip_text_feature(self, text: Tensor, normalize: bool = True) -> Tensor:
        return self.encode_text(text, normalize=normalize)

    def get_clip_logits(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """(image->text, text->image) logits: exp(logit_scale) * cosine (+ logit_bias)."""
        logits = self.logit_scale.exp() * self.encode_image(image, True) @ self.encode_text(text, True).T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T

    def get_reconstruction_latents(self, image: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> latents (B, C, H/p, W/p)."""
        return self.trunk.encode_latents(image)

    def get_latents_decoded_images(self, latents: Tensor) -> Tensor:
        """Latents (B, C, h, w) -> images (B, 3, h*p, w*p) in ImageNet mean/std space."""
        return self.decode(latents)

    def forward(
        self, image: Tensor | None = None, text: Tensor | None = None, forward_type: str = "clip"
    ) -> dict:
        """The official multi-mode forward: 'clip', 'rec' or 'feature'."""
        if forward_type == "clip":
            self._require_clip()
            out = {}
            if image is not None:
                out["image_features"] = self.get_clip_image_feature(image)
            if text is not None:
                out["text_features"] = self.get_clip_text_feature(text)
            out["logit_scale"] = self.logit_scale.exp()
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if image is None:
            raise ValueError(f"image is required for forward_type={forward_type!r}")
        if forward_type == "rec":
            latents = self.get_reconstruction_latents(image)
            return {
                "latents": latents,
                "reconstructed_image": self.get_latents_decoded_images(latents),
                "target_image": image,
            }
        if forward_type == "feature":
            return self.get_last_layer_feature(image, use_bottleneck=True)
        raise ValueError(f"Invalid forward_type: {forward_type!r} (expected 'clip', 'rec' or 'feature')")

    # ------------------------------------------------- official tensor names
    @staticmethod
    def _to_official_name(name: str) -> str:
        if name.startswith("text."):
            inner = name[len("text.") :]
            for ours, official in OFFICIAL_TEXT_NAMES.items():
                if inner.startswith(ours):
                    return official + inner[len(ours) :]
        return name

    @staticmethod
    def _from_official_name(name: str) -> str:
        for ours, official in OFFICIAL_TEXT_NAMES.items():
            if name.startswith(official):
                return "text." + ours + name[len(official) :]
        return name

    def official_state_dict(self) -> dict[str, Tensor]:
        """The state dict under the official tensor names (what ``model.safetensors`` holds)."""
        return {self._to_official_name(k): v for k, v in self.state_dict().items()}

    def load_official_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Load official-named tensors; any missing, unexpected or mis-shaped tensor is a clear error."""
        ours = {self._from_official_name(k): v for k, v in state_dict.items()}
        expected = self.state_dict()
        missing = sorted(set(expected) - set(ours))
        unexpected = sorted(set(ours) - set(expected))
        mismatched = [
            f"{self._to_official_name(k)}: checkpoint {tuple(v.shape)} vs config {tuple(expected[k].shape)}"
            for k, v in ours.items()
            if k in expected and tuple(v.shape) != tuple(expected[k].shape)
        ]
        if missing or unexpected or mismatched:
            problems = []
            if mismatched:
                problems.append(f"{len(mismatched)} shape mismatch(es): " + "; ".join(mismatched[:8]))
            if missing:
                problems.append(
                    f"{len(missing)} missing: " + ", ".join(self._to_official_name(k) for k in missing[:8])
                )
            if unexpected:
                problems.append(
                    f"{len(unexpected)} unexpected: "
                    + ", ".join(self._to_official_name(k) for k in unexpected[:8])
                )
            raise CheckpointMismatchError(
                "checkpoint does not match the model built from its config (" + " | ".join(problems) + ")"
            )
        self.load_state_dict(ours, strict=True)
