"""``TokenizerPretraining``: the VTP stage-1 objective as a LightningModule.

One step takes the batch of :mod:`vtp_gen.systems.stage1_data` (B image-text
pairs, the SSL views of a subset, the reconstruction subset) and computes

    L = lambda_clip * L_clip + lambda_ssl * L_ssl + lambda_rec * L_rec

with one backward pass. Each objective has its own stochastic-depth rate and
its own inputs; the student trunk runs them as one forward per image size
(:meth:`TokenizerPretraining.student_features`):

- CLIP: all B centre crops + captions, symmetric InfoNCE over the batch
  gathered across ranks (:class:`~vtp_gen.losses.CLIPLoss`);
- SSL: the subset's 2 global crops (iBOT-masked) and local crops through the
  student; the EMA teacher sees the unmasked global crops once, and its output
  feeds both the DINO loss (CLS) and the iBOT loss (masked patches), plus
  KoLeo on the student's global CLS tokens (DINOv2);
- reconstruction: the subset's centre crops through encoder, bottleneck and
  pixel decoder, L1 + LPIPS (the trunk outputs are the CLIP forward's rows
  when neither objective drops paths).

An objective with weight 0 is switched off completely: its forward never runs,
the collate makes no inputs for it, and the parameters only it uses (text
tower, DINO head, pixel decoder) are frozen and left out of the optimiser.

Around the step: AdamW without decay on norms / biases / tokens, warm-up +
cosine learning rate and cosine weight decay set before every step, gradient
clipping (the Trainer's ``gradient_clip_val``, applied by
:mod:`vtp_gen.systems.clipping` so a fused AdamW clips under bf16 too), the CLIP logit scale clamped to [0, ln 100] and the EMA
teacher updated with its cosine momentum after every step, the DINO head's
prototype layer frozen for the first steps. The teacher, head, loss centres and
optimiser live in the Lightning checkpoint; :meth:`export_tokenizer` writes
only the tokenizer, in the official VTP layout.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn

from vtp_gen.interop.vtp import save_pretrained
from vtp_gen.losses import (
    CLIPLoss,
    DINOLoss,
    KoLeoLoss,
    ReconstructionLoss,
    clamp_logit_scale_,
    iBOTPatchLoss,
    schedules,
)
from vtp_gen.models.tokenizer import (
    DINOHead,
    EncoderFeatures,
    TrunkInput,
    VTPModel,
    ema_update,
    make_ema_teacher,
)
from vtp_gen.models.tokenizer.encoder import check_image_grid
from vtp_gen.systems.clipping import ClipsGradients
from vtp_gen.systems.data_accounting import AccountsForData
from vtp_gen.systems.nonfinite import step_was_skipped
from vtp_gen.systems.optim import apply_schedule, build_adamw
from vtp_gen.systems.stage1_data import derive_seed


class TokenizerPretraining(ClipsGradients, AccountsForData, L.LightningModule):
    """Stage-1 pre-training of ``model`` (a :class:`VTPModel`).

    ``objectives``, ``ssl`` and ``optim`` are the sections of
    :class:`~vtp_gen.pipeline.stage1.config.Stage1Config` (dataclasses or
    OmegaConf nodes). ``total_steps`` sets the length of the cosine schedules.
    ``dino_head`` and ``perceptual`` (the LPIPS network) may be injected;
    otherwise they are built from the config.
    """

    data_phase = "pre-training"

    def __init__(
        self,
        model: VTPModel,
        objectives,
        ssl,
        optim,
        total_steps: int,
        seed: int = 0,
        dino_head: DINOHead | None = None,
        perceptual: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.ssl = ssl
        self.optim = optim
        self.total_steps = max(int(total_steps), 1)
        self.seed = seed
        self.clip_on = objectives.lambda_clip > 0
        self.ssl_on = objectives.lambda_ssl > 0
        self.rec_on = objectives.lambda_rec > 0
        if not (self.clip_on or self.ssl_on or self.rec_on):
            raise ValueError("all objective weights are 0: nothing to train")
        if self.clip_on and model.text is None:
            raise ValueError("lambda_clip > 0 needs a tokenizer with a text tower (train_clip=True)")
        if self.rec_on and model.pixel_decoder is None:
            raise ValueError(
                "lambda_rec > 0 needs a tokenizer with a pixel decoder (train_reconstruction=True)"
            )

        if self.clip_on:
            self.clip_loss = CLIPLoss(
                local_loss=objectives.clip_local_loss, gather_with_grad=objectives.clip_local_loss
            )
        if self.ssl_on:
            self.dino_head = dino_head or DINOHead(
                model.trunk.embed_dim,
                out_dim=ssl.prototypes,
                hidden_dim=ssl.head_hidden_dim,
                bottleneck_dim=ssl.head_bottleneck_dim,
                nlayers=ssl.head_layers,
            )
            self.teacher = make_ema_teacher(nn.ModuleDict({"trunk": model.trunk, "head": self.dino_head}))
            centering = dict(
                centering=ssl.centering,
                center_momentum=ssl.center_momentum,
                sinkhorn_iterations=ssl.sinkhorn_iterations,
            )
            self.dino_loss = DINOLoss(ssl.prototypes, ssl.student_temp, **centering)
            self.ibot_loss = iBOTPatchLoss(ssl.prototypes, ssl.student_temp, **centering)
            self.koleo_loss = KoLeoLoss()
        else:
            self.dino_head = None
            self.teacher = None
        if self.rec_on:
            self.rec_loss = ReconstructionLoss(objectives.l1_weight, objectives.lpips_weight, perceptual)
        self.init_data_account()
        # Parameters no enabled objective reaches are frozen: they cost no optimiser state and
        # DDP does not wait for gradients that never come.
        trainable = {id(p) for _, p in self.trainable_named_parameters()}
        for parameter in self.parameters():
            if id(parameter) not in trainable:
                parameter.requires_grad_(False)

    # ------------------------------------------------------------------ parameters
    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The student parameters the enabled objectives update (teacher excluded)."""
        model = self.model
        bottleneck_for_clip = self.clip_on and not model.config.vision_bottleneck_ae_only
        out: list[tuple[str, nn.Parameter]] = []
        for name, param in model.trunk.named_parameters(prefix="model.trunk"):
            if ".feature_bottleneck." in name and not (self.rec_on or bottleneck_for_clip):
                continue
            out.append((name, param))
        if self.clip_on:
            out += list(model.visual_proj.named_parameters(prefix="model.visual_proj"))
            out += list(model.text.named_parameters(prefix="model.text"))
            out += [("model.logit_scale", model.logit_scale)]
            if model.logit_bias is not None:
                out += [("model.logit_bias", model.logit_bias)]
        if self.rec_on:
            out += list(model.pixel_decoder.named_parameters(prefix="model.pixel_decoder"))
        if self.ssl_on:
            out += [(n, p) for n, p in self.dino_head.named_parameters(prefix="dino_head") if p.requires_grad]
        return out

    def configure_optimizers(self):
        return build_adamw(
            self.trainable_named_parameters(),
            lr=self.optim.lr,
            betas=(self.optim.beta1, self.optim.beta2),
            eps=self.optim.eps,
            weight_decay=self.optim.weight_decay_start,
            fused=self.optim.fused,
        )

    # ------------------------------------------------------------------ schedules
    def learning_rate(self, step: int) -> float:
        warmup = min(self.optim.warmup_steps, self.total_steps)
        return schedules.learning_rate(step, self.total_steps, self.optim.lr, warmup, self.optim.min_lr)

    def weight_decay(self, step: int) -> float:
        return schedules.weight_decay(
            step, self.total_steps, self.optim.weight_decay_start, self.optim.weight_decay_end
        )

    def teacher_momentum(self, step: int) -> float:
        return schedules.teacher_momentum(
            step, self.total_steps, self.ssl.momentum_start, self.ssl.momentum_end
        )

    def teacher_temperature(self, step: int) -> float:
        return schedules.teacher_temperature(
            step, self.ssl.teacher_temp_warmup_steps, self.ssl.teacher_temp_start, self.ssl.teacher_temp
        )

    # ------------------------------------------------------------------ objectives
    def student_features(self, batch: dict) -> dict[str, EncoderFeatures]:
        """Every student trunk output the step needs: ``clip``, ``ssl_global``, ``ssl_local``, ``rec``.

        The inputs go through the trunk as one forward per image size
        (``encode_features_batched``): CLIP images and SSL global crops share a
        pass when their sizes match, each keeping its own stochastic-depth rate.
        The reconstruction images are a subset of the CLIP images, so when
        neither objective drops paths their trunk outputs are the CLIP ones,
        indexed, instead of a second forward of the same images.
        """
        obj = self.objectives
        inputs: dict[str, TrunkInput] = {}
        if self.clip_on:
            inputs["clip"] = TrunkInput(batch["image"], None, obj.drop_path_clip)
        if self.ssl_on:
            inputs["ssl_global"] = TrunkInput(batch["global_crops"], batch["masks"], obj.drop_path_ssl)
            if batch["local_crops"].shape[0]:
                inputs["ssl_local"] = TrunkInput(batch["local_crops"], None, obj.drop_path_ssl)
        rec_reuses_clip = self.clip_on and obj.drop_path_clip == 0 and obj.drop_path_rec == 0
        if self.rec_on and not rec_reuses_clip:
            inputs["rec"] = TrunkInput(batch["image"][batch["rec_indices"]], None, obj.drop_path_rec)
        features = dict(zip(inputs, self.model.trunk.encode_features_batched(list(inputs.values()))))
        if self.rec_on and rec_reuses_clip:
            clip, rows = features["clip"], batch["rec_indices"]
            features["rec"] = EncoderFeatures(clip.cls_token[rows], clip.patch_tokens[rows])
        return features

    def clip_objective(self, features: EncoderFeatures, text_tokens: Tensor) -> dict[str, Tensor]:
        image_embedding = self.model.clip_image_embedding(features, normalize=True)
        text_embedding = self.model.encode_text(text_tokens, normalize=True)
        return {"loss": self.clip_loss(image_embedding, text_embedding, self.model.logit_scale)}

    def ssl_objective(
        self,
        batch: dict,
        teacher_temp: float,
        student_global: EncoderFeatures,
        student_local: EncoderFeatures | None,
    ) -> dict[str, Tensor]:
        """DINO + iBOT + KoLeo from the student's features of the global (masked) and local crops."""
        global_crops, mask_indices, masks = batch["global_crops"], batch["mask_indices"], batch["masks"]
        head = self.dino_head
        # Teacher: one forward of the unmasked global crops, shared by DINO (CLS) and iBOT (patches).
        with torch.no_grad():
            teacher_features = self.teacher["trunk"].encode_features(global_crops, drop_path_rate=0.0)
            teacher_patches = teacher_features.patch_tokens.flatten(0, 1)[mask_indices]
            teacher_out = self.teacher["head"](torch.cat([teacher_features.cls_token, teacher_patches]))
            teacher_cls, teacher_masked = teacher_out.split([global_crops.shape[0], teacher_patches.shape[0]])

        student_cls = [student_global.cls_token]
        if student_local is not None:
            student_cls.append(student_local.cls_token)
        student_patches = student_global.patch_tokens.flatten(0, 1)[mask_indices]
        # One head call for every token that needs it.
        student_out = head(torch.cat([*student_cls, student_patches]))
        sizes = [t.shape[0] for t in student_cls] + [student_patches.shape[0]]
        parts = list(student_out.split(sizes))
        student_global_out, student_masked = parts[0], parts[-1]
        student_local_out = parts[1] if len(parts) == 3 else None

        dino = self.dino_loss(student_global_out, teacher_cls, teacher_temp, student_local_out)
        ibot = self.ibot_loss(student_masked, teacher_masked, teacher_temp, masks, batch.get("mask_weights"))
        cls_tokens = student_global.cls_token
        # KoLeo needs a nearest neighbour: a step whose SSL subset shrank to one image (the rest of
        # the batch was bad data) skips the term instead of failing.
        koleo = self.koleo_loss(cls_tokens, groups=2) if cls_tokens.shape[0] >= 4 else cls_tokens.sum() * 0.0
        ssl = self.ssl
        loss = ssl.dino_weight * dino + ssl.ibot_weight * ibot + ssl.koleo_weight * koleo
        return {"loss": loss, "dino": dino.detach(), "ibot": ibot.detach(), "koleo": koleo.detach()}

    def reconstruction_objective(self, images: Tensor, features: EncoderFeatures) -> dict[str, Tensor]:
        """L1 (+ LPIPS) of the pixel decoder's reconstruction from ``features`` (the trunk's, of ``images``)."""
        trunk = self.model.trunk
        latents = trunk.to_latents(features.patch_tokens, check_image_grid(images, trunk.patch_size))
        reconstruction = self.model.decode(latents, drop_path_rate=self.objectives.drop_path_rec)
        return self.rec_loss(reconstruction, images)

    def compute_losses(self, batch: dict, step: int) -> dict[str, Tensor]:
        """All enabled objectives on one batch and their weighted sum ``loss``; other entries are for logging."""
        obj = self.objectives
        out: dict[str, Tensor] = {}
        total = None

        def add(weight: float, value: Tensor) -> None:
            nonlocal total
            total = weight * value if total is None else total + weight * value

        student = self.student_features(batch)
        if self.clip_on:
            clip = self.clip_objective(student["clip"], batch["text_tokens"])
            add(obj.lambda_clip, clip["loss"])
            out["clip_loss"] = clip["loss"].detach()
        if self.ssl_on:
            ssl = self.ssl_objective(
                batch, self.teacher_temperature(step), student["ssl_global"], student.get("ssl_local")
            )
            add(obj.lambda_ssl, ssl["loss"])
            out.update(
                ssl_loss=ssl["loss"].detach(),
                dino_loss=ssl["dino"],
                ibot_loss=ssl["ibot"],
                koleo_loss=ssl["koleo"],
            )
        if self.rec_on:
            rec = self.reconstruction_objective(batch["image"][batch["rec_indices"]], student["rec"])
            add(obj.lambda_rec, rec["loss"])
            out["rec_loss"] = rec["loss"].detach()
            out["rec_l1"] = rec["l1"]
            if "lpips" in rec:
                out["rec_lpips"] = rec["lpips"]
        out["loss"] = total
        return out

    # ------------------------------------------------------------------ Lightning hooks
    def _step_seed(self, batch: dict, batch_idx: int) -> int:
        # The sampler's step index names the micro-batch uniquely, also after a resume.
        key = int(batch["step"]) if "step" in batch else self.global_step * 1_000_003 + batch_idx
        return derive_seed(self.seed, "train_step", key, self.global_rank)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        step = self.global_step
        for optimizer in self.trainer.optimizers:
            apply_schedule(optimizer, self.learning_rate(step), self.weight_decay(step))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        step = self.global_step
        self.count_data(batch)
        # Stochastic depth draws from torch's global generator: seed it from the step (inside a fork,
        # so nothing outside the step is affected) to make a resumed run take the same paths.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self._step_seed(batch, batch_idx))
            losses = self.compute_losses(batch, step)
        self._log_step(losses, step, batch_size=int(batch["image"].shape[0]))
        return losses["loss"]

    def _log_step(self, losses: dict[str, Tensor], step: int, batch_size: int) -> None:
        values = {f"train/{k}": v.detach() for k, v in losses.items()}
        values["train/lr"] = self.learning_rate(step)
        values["train/weight_decay"] = self.weight_decay(step)
        if self.clip_on:
            values["train/logit_scale"] = self.clip_loss.logit_scale_value(self.model.logit_scale.detach())
        if self.ssl_on:
            values["train/teacher_temp"] = self.teacher_temperature(step)
            values["train/teacher_momentum"] = self.teacher_momentum(step)
        values.update(self.data_log_values())
        self.log("train/loss", values.pop("train/loss"), prog_bar=True, batch_size=batch_size)
        self.log_dict(values, batch_size=batch_size)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.ssl_on and self.global_step < self.ssl.freeze_last_layer_steps:
            # DINOv2: the prototypes stay at their initialisation for the first steps.
            for parameter in self.dino_head.last_layer.parameters():
                parameter.grad = None
        if self.global_step % max(self.trainer.log_every_n_steps, 1) == 0:
            grads = [p.grad.detach().norm() for p in self.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.stack(grads).norm())

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        step = self.global_step  # the step being taken (Lightning counts it once it completes)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if step_was_skipped(self):  # NaN/Inf gradients: weights unchanged, so no teacher update either
            return
        if self.clip_on:
            clamp_logit_scale_(self.model.logit_scale)
        if self.ssl_on:
            self.update_teacher(self.teacher_momentum(step))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        student = nn.ModuleDict({"trunk": self.model.trunk, "head": self.dino_head})
        ema_update(self.teacher, student, momentum)

    # ------------------------------------------------------------------ export
    def export_tokenizer(self, directory: str | Path) -> Path:
        """The tokenizer alone (no teacher, no DINO head) in the official VTP layout."""

        return save_pretrained(self.model, directory)
