"""Masked textual inversion on CAI's pseudo anomalies (CAI paper Eq. 5, AnomalyDiffusion Eq. 5-6).

Only the class embeddings ``e_a`` and the spatial encoder ``E_s`` train; the UNet, VAE and text
encoder stay frozen. Loss per batch::

    m = maxpool(y_loc -> latent size)                          (B, 1, h, w)
    L = sum(m * (eps - eps_theta(z_t, t, {e_a, E_s(y_loc)}))**2) / (C * sum(m))

(normalised by the masked element count so that small and large anomalies weigh alike per pixel).
Each step's batch, timesteps and noise are a pure function of ``(seed, step)``, so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cai_aug.engine import rng

from .checkpoint import (
    CONFIG,
    CDMEmbeddings,
    load_checkpoint,
    load_training_state,
    read_config,
    save_checkpoint,
)
from .conditioning import TextConditioner
from .data import PseudoAnomalyDataset
from .encoder import AnomalyEmbeddings, EncoderConfig, SpatialEncoder, init_class_vectors
from .models import CDMComponents, load_components

log = logging.getLogger(__name__)
LOSS_LOG = "loss.csv"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class CDMTrainConfig:
    """Training settings (AnomalyDiffusion's k = 8 anomaly tokens and n = 4 spatial tokens by default)."""

    steps: int = 3000
    batch_size: int = 4
    lr: float = 5e-3
    encoder_lr: float = 1e-3
    tokens_per_class: int = 8
    spatial_tokens: int = 4
    resolution: int | None = None  # None: the model's own (512 for SD 1.5)
    mask_size: int = 128
    seed: int = 0
    save_every: int = 500
    dtype: str = "float32"  # of the frozen networks; "float16"/"bfloat16" on a GPU
    encoder: dict[str, Any] = field(default_factory=dict)  # extra EncoderConfig fields

    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        return _DTYPES[self.dtype]


def new_embeddings(components: CDMComponents, classes: list[str], config: CDMTrainConfig) -> CDMEmbeddings:
    """Freshly initialised class embeddings + spatial encoder for these components."""
    table = components.text_encoder.get_input_embeddings().weight
    vectors = init_class_vectors(classes, config.tokens_per_class, table, components.tokenizer, config.seed)
    encoder_config = EncoderConfig(
        embed_dim=components.embed_dim,
        num_tokens=config.spatial_tokens,
        mask_size=config.mask_size,
        init_scale=float(table.detach().float().std()),
        **config.encoder,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = SpatialEncoder(encoder_config)
    return CDMEmbeddings(AnomalyEmbeddings(classes, vectors), encoder)


def step_generator(seed: int, step: int, purpose: str = "cdm-train") -> torch.Generator:
    """CPU generator for one training step: batch, timesteps and noise depend on (seed, step) only."""
    return torch.Generator().manual_seed(rng.sample_key(seed, purpose, step))


class CDMTrainer:
    """One optimiser over the embeddings and the encoder, with the frozen model beside it."""

    def __init__(
        self,
        components: CDMComponents,
        embeddings: CDMEmbeddings,
        config: CDMTrainConfig | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.config = config or CDMTrainConfig()
        device = torch.device(device) if device is not None else components.device
        self.components = components.to(device=device, dtype=self.config.torch_dtype())
        self.device = device
        self.embeddings = embeddings.to(device).train()
        self.conditioner = TextConditioner(components.text_encoder, components.tokenizer, embeddings.num_tokens)
        self.noise_scheduler = components.noise_scheduler()
        self.optimizer = torch.optim.AdamW(
            [
                {"params": embeddings.anomaly.parameters(), "lr": self.config.lr},
                {"params": embeddings.encoder.parameters(), "lr": self.config.encoder_lr},
            ],
            weight_decay=0.0,
        )
        self.step = 0

    def loss(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        class_index: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Masked diffusion loss of one batch: images ``(B,3,H,W)`` in [0,1], masks ``(B,1,H,W)``."""
        c = self.components
        dtype = c.unet.dtype
        images = images.to(self.device, dtype)
        with torch.no_grad():
            dist = c.vae.encode(images * 2.0 - 1.0).latent_dist
            eps_vae = torch.randn(dist.mean.shape, generator=generator).to(self.device, dist.mean.dtype)
            latents = (dist.mean + dist.std * eps_vae) * c.vae.config.scaling_factor
        batch = latents.shape[0]
        num_t = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, num_t, (batch,), generator=generator).to(self.device)
        noise = torch.randn(latents.shape, generator=generator).to(self.device, latents.dtype)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        tokens = self.embeddings(class_index.to(self.device), masks.to(self.device))
        cond = self.conditioner.encode(tokens)
        pred = c.unet(noisy, t, encoder_hidden_states=cond).sample.float()
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t).float()
        else:
            target = noise.float()
        m = latent_mask(masks.to(self.device), latents.shape[-2:])
        weight = m.sum() * latents.shape[1]
        return (m * (pred - target) ** 2).sum() / weight.clamp(min=1.0)

    def train_step(
        self, images: torch.Tensor, masks: torch.Tensor, class_index: torch.Tensor, generator: torch.Generator
    ) -> float:
        """One optimiser step; returns the loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(images, masks, class_index, generator)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())


def latent_mask(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixel masks ``(B,1,H,W)`` -> latent masks ``(B,1,h,w)`` in {0,1}: a cell is in when any pixel is."""
    return (F.adaptive_max_pool2d(masks.float(), tuple(size)) > 0).float()


def _batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of one step: epoch-wise permutations keyed by (seed, epoch), so every sample is seen."""
    out, cache = [], {}
    for j in range(batch_size):
        i = step * batch_size + j
        epoch = i // n
        if epoch not in cache:
            cache[epoch] = torch.randperm(n, generator=step_generator(seed, epoch, "cdm-epoch"))
        out.append(int(cache[epoch][i % n]))
    return out


def _truncate_log(path: Path, step: int) -> None:
    """Drop logged rows past the checkpoint's step (written before a crash, redone on resume)."""
    if not path.is_file():
        return
    rows = list(csv.reader(path.open()))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(kept)


@dataclass
class TrainResult:
    out: Path
    step: int
    last_loss: float
    seconds_per_step: float
    classes: list[str]


def train_cdm(
    pseudo: str | Path,
    pretrained: str | Path | CDMComponents,
    out: str | Path,
    classes: list[str] | None = None,
    config: CDMTrainConfig | None = None,
    resume: bool = False,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train CDM on a ``cai-aug synth`` folder and write a checkpoint to ``out``.

    ``pretrained`` is a local SD-style diffusers folder (or loaded components). With ``resume=True``
    an existing checkpoint in ``out`` is continued up to ``config.steps`` total steps; without it an
    existing checkpoint is an error rather than silently overwritten.
    """
    config = config or CDMTrainConfig()
    out = Path(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    has_checkpoint = (out / CONFIG).is_file()
    if has_checkpoint and not resume:
        raise ValueError(f"{out} already holds a CDM checkpoint: pass resume=True (--resume) or another folder")
    if resume and has_checkpoint:
        saved = read_config(out)
        config = _merge_saved(config, saved)
        classes = list(saved["classes"])
    components = pretrained if isinstance(pretrained, CDMComponents) else load_components(pretrained, device=device)
    resolution = config.resolution or components.default_resolution
    if resolution % components.size_multiple:
        raise ValueError(f"resolution {resolution} must be a multiple of {components.size_multiple}")
    dataset = PseudoAnomalyDataset(pseudo, resolution, classes)
    if resume and has_checkpoint:
        embeddings = load_checkpoint(out)
        state = load_training_state(out)
    else:
        embeddings, state = new_embeddings(components, dataset.classes, config), None
    trainer = CDMTrainer(components, embeddings, config, device=device)
    if state is not None:
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.step = int(state["step"])
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOSS_LOG
    _truncate_log(log_path, trainer.step)
    extra = {
        "pretrained": str(getattr(components, "source", "")),
        "resolution": resolution,
        "train": asdict(config),
        "samples": len(dataset),
    }
    new_log = not log_path.is_file()
    last, started, first_step = float("nan"), time.perf_counter(), trainer.step
    with (
        log_path.open("a", newline="") as log_file,
        tqdm(total=config.steps, initial=trainer.step, desc="cdm-train", disable=not progress) as bar,
    ):
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(["step", "loss", "seconds"])
        while trainer.step < config.steps:
            indices = _batch_indices(len(dataset), config.batch_size, trainer.step, config.seed)
            items = [dataset[i] for i in indices]
            images = torch.stack([it[0] for it in items])
            masks = torch.stack([it[1] for it in items])
            class_index = torch.tensor([it[2] for it in items], dtype=torch.int64)
            generator = step_generator(config.seed, trainer.step)
            last = trainer.train_step(images, masks, class_index, generator)
            writer.writerow([trainer.step, f"{last:.6f}", f"{time.perf_counter() - started:.3f}"])
            log_file.flush()
            bar.set_postfix(loss=f"{last:.4f}")
            bar.update(1)
            if trainer.step % config.save_every == 0 or trainer.step == config.steps:
                save_checkpoint(out, trainer.embeddings, extra, trainer.optimizer, trainer.step)
    if trainer.step == first_step:  # nothing to do (already at config.steps): still leave a checkpoint
        save_checkpoint(out, trainer.embeddings, extra, trainer.optimizer, trainer.step)
    done = trainer.step - first_step
    per_step = (time.perf_counter() - started) / done if done else float("nan")
    return TrainResult(out, trainer.step, last, per_step, list(dataset.classes))


def _merge_saved(config: CDMTrainConfig, saved: dict[str, Any]) -> CDMTrainConfig:
    """On resume the checkpoint's shapes and seed win; the step target and save cadence are the caller's."""
    train = dict(saved.get("train", {}))
    train["steps"] = config.steps
    train["save_every"] = config.save_every
    known = set(CDMTrainConfig.__dataclass_fields__)
    return CDMTrainConfig(**{k: v for k, v in train.items() if k in known})
