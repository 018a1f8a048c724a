"""CDMSampler: pseudo anomalies by blended latent diffusion, as a batch transform.

For each normal image ``y`` and mask ``m`` (AnomalyDiffusion Eq. 1, with DDIM steps)::

    z_T  = m * eps + (1 - m) * q(y_T | y_0)
    z_{t-1} = m * DDIM(z_t, eps_theta(z_t, t, e)) + (1 - m) * q(y_{t-1} | y_0)
    x    = m_px * clamp(D(z_0)) + (1 - m_px) * y          (pixels outside the mask: the input, exactly)

with ``e = {e_a(class), E_s(m)}``. Randomness is per sample: a torch.Generator seeded from the
sample's ``cai_aug.engine.rng`` key draws its noise and the class choice uses the key too, so a sample's
result does not depend on its batch companions (up to floating-point noise of batched kernels).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cai_aug.engine import rng
from cai_aug.io.coerce import as_float_batch, restore_layout

from .attention import adaptive_weight_map, install_reweighting
from .checkpoint import CDMEmbeddings, load_checkpoint, read_config
from .conditioning import TextConditioner
from .models import CDMComponents, from_pipeline, load_components
from .train import latent_mask

# Sub-key parts (folded in with rng.derive) that keep CDM's draws apart from CAI's own streams.
_CLASS_PART = 0xCD3_C1A55
_NOISE_PART = 0xCD3_0015E


@dataclass
class CDMResult:
    """``images (B,C,H,W)`` (input dtype), ``masks (B,1,H,W)`` in {0,1} (input float dtype, float32 for
    uint8), ``labels (B,)`` float32, the class and key of each sample."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    keys: torch.Tensor


class CDMSampler:
    """Batch transform ``sampler(images, masks=None, classes=None, keys=None) -> (images, masks, labels)``.

    Args:
        pipeline_or_path: a local SD-style diffusers folder, loaded components, or a diffusers pipeline.
        embeddings: a CDM checkpoint folder (from ``cdm-train``) or :class:`CDMEmbeddings`.
        classes: the anomaly classes to draw from (a subset of the trained ones: the paper's CDM-5 vs
            CDM-8); default all trained classes. A call may also name one class per sample.
        steps: DDIM steps; ``eta`` DDIM's stochasticity (0 = deterministic DDIM).
        guidance_scale: classifier-free guidance against the empty prompt; 1 disables it (half cost).
        adaptive_attention: AnomalyDiffusion's adaptive attention re-weighting (one VAE decode per step).
        resolution: side the diffusion runs at (images are resized there and back; the final
            composite is at the input size); default the model's own (512 for SD 1.5).
        cai / bank: where masks come from when a call passes none: ``cai`` is a ``cai_aug.CAI``
            (or any callable ``cai(images, keys=keys)`` returning an object with ``.masks`` or a mask
            tensor), ``bank`` an ``AnomalyBank`` or bank folder from which a ``CAI`` is built with
            ``cai_kwargs``. Only CAI's location masks are used; its pixels are discarded.
        seed: base seed of the per-sample keys (random when None, fixed for the sampler's life).
    """

    def __init__(
        self,
        pipeline_or_path: str | Path | CDMComponents | Any,
        embeddings: str | Path | CDMEmbeddings,
        classes: Sequence[str] | None = None,
        steps: int = 50,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        adaptive_attention: bool = False,
        max_attention_weight: float | None = 5.0,
        resolution: int | None = None,
        cai: Any = None,
        bank: Any = None,
        cai_kwargs: dict[str, Any] | None = None,
        seed: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(pipeline_or_path, CDMComponents):
            components = pipeline_or_path
        elif isinstance(pipeline_or_path, str | Path):
            components = load_components(pipeline_or_path)
        else:
            components = from_pipeline(pipeline_or_path)
        self.components = components.to(device=self.device, dtype=dtype)
        if not isinstance(embeddings, CDMEmbeddings):
            embeddings = load_checkpoint(embeddings)
        # No eval()/requires_grad_ here: the caller may be training these very embeddings (sampling
        # runs under no_grad, and the encoder has no dropout or batch norm).
        self.embeddings = embeddings.to(self.device)
        if self.embeddings.encoder.config.embed_dim != components.embed_dim:
            raise ValueError(
                f"embeddings are {self.embeddings.encoder.config.embed_dim}-wide but the text encoder "
                f"expects {components.embed_dim}: they were trained on another model"
            )
        self.classes = list(classes) if classes else list(self.embeddings.classes)
        self.embeddings.anomaly.index(self.classes)  # raises on unknown names
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self.steps, self.guidance_scale, self.eta = steps, guidance_scale, eta
        self.adaptive_attention, self.max_attention_weight = adaptive_attention, max_attention_weight
        self.resolution = resolution or components.default_resolution
        if self.resolution % components.size_multiple:
            raise ValueError(f"resolution must be a multiple of {components.size_multiple}")
        self.conditioner = TextConditioner(components.text_encoder, components.tokenizer, self.embeddings.num_tokens)
        self.seed = int(seed) if seed is not None else secrets.randbits(62)
        self.cai = cai if cai is not None else self._build_cai(bank, cai_kwargs or {}, self.seed)
        self._calls = 0

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, pretrained: str | Path | None = None, **kwargs: Any) -> CDMSampler:
        """A sampler of a ``cdm-train`` folder; the diffusion model defaults to the one it was trained on.

        ``kwargs`` go to the constructor (``bank=``/``cai=`` for default masks, ``seed``, ``classes``,
        ``steps``, ``device`` ...).
        """
        if pretrained is None:
            pretrained = read_config(checkpoint).get("pretrained") or ""
            if not Path(pretrained).is_dir():
                raise ValueError(
                    f"{checkpoint} does not name a usable pretrained folder ({pretrained!r}): pass pretrained="
                )
        return cls(pretrained, checkpoint, **kwargs)

    def _build_cai(self, bank: Any, kwargs: dict[str, Any], seed: int) -> Any:
        if bank is None:
            return None
        # the engine; only needed for the default (CAI) masks
        from cai_aug.engine.bank import AnomalyBank
        from cai_aug.engine.cai import CAI

        if isinstance(bank, str | Path):
            bank = AnomalyBank.from_folder(bank)
        return CAI(bank, seed=seed, device=self.device, **kwargs)

    # --- keys, classes, masks ----------------------------------------------------------------------

    def sample_keys(self, batch: int, keys: torch.Tensor | Sequence[int | str] | None) -> torch.Tensor:
        """Per-sample int64 keys ``(B,)``: given, hashed from image keys, or (seed, rank, call, position)."""
        if keys is None:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            out = torch.tensor(
                [rng.sample_key(self.seed, "cdm", rank, self._calls, i) for i in range(batch)],
                dtype=torch.int64,
            )
            self._calls += 1
            return out
        if isinstance(keys, torch.Tensor):
            out = keys.to(torch.int64).reshape(-1).cpu()
        else:
            out = rng.sample_keys(self.seed, list(keys))
        if out.numel() != batch:
            raise ValueError(f"got {out.numel()} keys for a batch of {batch}")
        return out

    def _choose_classes(self, keys: torch.Tensor, classes: str | Sequence[str] | None) -> list[str]:
        if classes is None:
            picks = rng.randint(rng.derive(keys, _CLASS_PART), rng.Stream.EXTRA, len(self.classes))
            return [self.classes[int(i)] for i in picks]
        names = [classes] * keys.numel() if isinstance(classes, str) else list(classes)
        if len(names) != keys.numel():
            raise ValueError(f"classes must be one name or one per sample, got {len(names)} for {keys.numel()}")
        self.embeddings.anomaly.index(names)
        return names

    def _masks(self, images: torch.Tensor, masks: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        if masks is not None:
            if masks.ndim == 3:
                masks = masks[:, None]
            if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
                raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
            return (masks.to(images.device).float() > 0.5).float()
        if self.cai is None:
            raise ValueError(
                "no masks: pass masks=(B,1,H,W), or build the sampler with cai=cai_aug.CAI(bank, ...) or "
                "bank=... so that CAI's location sampling supplies them"
            )
        result = self.cai(images, keys=keys)
        out = result.masks if hasattr(result, "masks") else result
        return (out.to(images.device).float() > 0.5).float()

    # --- the diffusion -----------------------------------------------------------------------------

    def _noise(self, generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
        """One noise tensor per sample from its own generator: ``(B, *shape)`` on the device."""
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        vae = self.components.vae
        latents = vae.encode((images * 2.0 - 1.0).to(vae.dtype)).latent_dist.mean
        return latents * vae.config.scaling_factor

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.components.vae
        images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.no_grad()
    def _diffuse(
        self, images: torch.Tensor, masks: torch.Tensor, class_names: list[str], keys: torch.Tensor
    ) -> torch.Tensor:
        """Blended DDIM at the working resolution: images ``(B,3,R,R)`` -> generated ``(B,3,R,R)``."""
        c = self.components
        unet_dtype = c.unet.dtype
        y0 = self._encode(images).float()
        m = latent_mask(masks, y0.shape[-2:])
        class_index = self.embeddings.anomaly.index(class_names).to(self.device)
        cond = self.conditioner.encode(self.embeddings(class_index, masks)).to(unet_dtype)
        guided = self.guidance_scale != 1.0
        if guided:
            cond = torch.cat([self.conditioner.unconditional(cond.shape[0]).to(unet_dtype), cond])
        seeds = rng.bits(rng.derive(keys, _NOISE_PART), rng.Stream.EXTRA)[:, 0]
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        scheduler = c.ddim_scheduler()
        scheduler.set_timesteps(self.steps)
        timesteps = scheduler.timesteps
        shape = tuple(y0.shape[1:])
        z = m * self._noise(generators, shape) * scheduler.init_noise_sigma
        z = z + (1 - m) * scheduler.add_noise(y0, self._noise(generators, shape), timesteps[:1])
        processor, saved = None, None
        if self.adaptive_attention:
            saved = dict(c.unet.attn_processors)
            processor = install_reweighting(c.unet)
        try:
            for i, t in enumerate(timesteps):
                model_in = torch.cat([z, z]) if guided else z
                model_in = scheduler.scale_model_input(model_in, t).to(unet_dtype)
                eps = c.unet(model_in, t, encoder_hidden_states=cond).sample.float()
                if guided:
                    uncond, conditional = eps.chunk(2)
                    eps = uncond + self.guidance_scale * (conditional - uncond)
                variance = self._noise(generators, shape) if self.eta > 0 else None
                out = scheduler.step(eps, t, z, eta=self.eta, variance_noise=variance)
                if i + 1 < len(timesteps):
                    background = scheduler.add_noise(y0, self._noise(generators, shape), timesteps[i + 1 : i + 2])
                else:
                    background = y0
                z = m * out.prev_sample + (1 - m) * background
                if processor is not None and i + 1 < len(timesteps):
                    x0_hat = self._decode(out.pred_original_sample)
                    w = adaptive_weight_map(masks, images, x0_hat, self.max_attention_weight)
                    processor.weights = F.adaptive_avg_pool2d(w, z.shape[-2:])
        finally:
            if saved is not None:
                c.unet.set_attn_processor(saved)
        return self._decode(z)

    def generate(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        classes: str | Sequence[str] | None = None,
        keys: torch.Tensor | Sequence[int | str] | None = None,
    ) -> CDMResult:
        """Pseudo anomalies of normal ``images (B,3,H,W)`` or ``(B,1,H,W)`` (float in [0,1] or uint8) with
        per-sample info; a grey batch comes back grey."""
        # The package's one coercion (cai_aug.io.coerce): shapes, dtypes, range and NaN checked there.
        x, layout = as_float_batch(images, "images")
        squeeze = not layout.batched
        if squeeze:
            images = images[None]
            masks = masks[None] if masks is not None and masks.ndim == 3 else masks
        in_dtype = images.dtype
        gray = x.shape[1] == 1
        x = x.expand(-1, 3, -1, -1) if gray else x
        keys_t = self.sample_keys(x.shape[0], keys)
        names = self._choose_classes(keys_t, classes)
        m = self._masks(x, masks, keys_t)
        if not bool((m > 0).any()):  # nothing to inject anywhere: skip the diffusion
            return CDMResult(
                images[0] if squeeze else images,
                m[0] if squeeze else m,
                torch.zeros(()) if squeeze else torch.zeros(len(names)),
                names,
                keys_t,
            )
        size = (self.resolution, self.resolution)
        generated = self._diffuse(
            _resize(x.to(self.device), size), _resize_mask(m.to(self.device), size), names, keys_t
        )
        generated = _resize(generated, tuple(x.shape[-2:])).to(images.device).clamp(0.0, 1.0)
        if gray:
            generated = generated.mean(1, keepdim=True)
        generated = restore_layout(generated, replace(layout, batched=True, channels_last=False))
        # Composite at the input size: outside the mask the input pixels are copied, bit for bit.
        out = torch.where(m.to(images.device) > 0, generated, images)
        labels = (m.flatten(1).amax(1) > 0).float()
        # CAIAugment's contract: masks in the input's float dtype (float32 for uint8 input).
        m = m.to(in_dtype) if in_dtype.is_floating_point else m
        if squeeze:
            out, m, labels = out[0], m[0], labels[0]
        return CDMResult(out, m, labels, names, keys_t)

    def __call__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor | None = None,
        classes: str | Sequence[str] | None = None,
        keys: torch.Tensor | Sequence[int | str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        result = self.generate(images, masks=masks, classes=classes, keys=keys)
        return result.images, result.masks, result.labels


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize ``(B,C,H,W)`` -> ``(B,C,*size)``; a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def _resize_mask(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Binary masks to ``size``: a cell is in when any pixel it covers is (thin defects survive)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return (masks > 0).float()
    return (F.interpolate(masks.float(), size=size, mode="area") > 0).float()
