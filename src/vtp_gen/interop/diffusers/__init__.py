"""diffusers export: the VTP tokenizer and our generators as diffusers models, and a generation pipeline.

    from vtp_gen.interop.diffusers import VTPPipeline, build_pipeline

    pipe = build_pipeline(load_tokenizer("runs/default/stage1/tokenizer"), generator, stats, shift=0.3)
    pipe.save_pretrained("exported/")
    pipe = VTPPipeline.from_pretrained("exported/")
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=49).images

    # text-to-image: the same tokenizer gives the text encoder (its own CLIP text tower)
    pipe = build_text_pipeline(load_tokenizer(...), text_generator, stats, shift=0.3)
    images = VTPTextPipeline.from_pretrained("exported/")(prompt=["a coat"], guidance_scale=4.0).images

Importing this package also makes the saved folders loadable: diffusers
resolves our component classes by module name only among modules already
imported (it does not import code a folder names). See docs/diffusers.md.
"""

from vtp_gen.interop.diffusers.autoencoder import AutoencoderVTP
from vtp_gen.interop.diffusers.export import (
    build_pipeline,
    build_text_pipeline,
    flow_scheduler,
    pipeline_sampling,
    scheduler_shift,
)
from vtp_gen.interop.diffusers.pipeline import VTPPipeline
from vtp_gen.interop.diffusers.text_encoder import VTPTextEncoder
from vtp_gen.interop.diffusers.text_pipeline import VTPTextPipeline
from vtp_gen.interop.diffusers.transformer import LightningDiTTransformer2DModel, TextDiTTransformer2DModel

__all__ = [
    "AutoencoderVTP",
    "LightningDiTTransformer2DModel",
    "TextDiTTransformer2DModel",
    "VTPPipeline",
    "VTPTextEncoder",
    "VTPTextPipeline",
    "build_pipeline",
    "build_text_pipeline",
    "flow_scheduler",
    "pipeline_sampling",
    "scheduler_shift",
]
