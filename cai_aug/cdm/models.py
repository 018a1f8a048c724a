"""Latent diffusion components: load a local Stable-Diffusion-style folder, or build one from configs.

A diffusers folder holds ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/``
(``model_index.json`` beside them is written but not required). Everything is loaded with
``local_files_only=True``: CDM never downloads. The config builders make randomly initialised models
of two shapes: ``tiny`` (a few MB, for tests and examples) and ``sd15`` (the shapes of Stable
Diffusion 1.5, for timing on a GPU without the real weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# The file that marks each subfolder as saved by diffusers / transformers.
_MARKERS = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("tokenizer_config.json", "vocab.json", "tokenizer.json"),
    "scheduler": ("scheduler_config.json",),
}


@dataclass
class CDMComponents:
    """The frozen parts of a latent diffusion model that CDM conditions and samples."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict[str, Any]
    source: str = "<in memory>"

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this for the UNet's down/up sampling to line up."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        """The pixel resolution the UNet was configured for (512 for SD 1.5)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def embed_dim(self) -> int:
        """Width of the text encoder's token embeddings (768 for SD 1.5)."""
        return int(self.text_encoder.get_input_embeddings().embedding_dim)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CDMComponents:
        """Move the three networks (in place) and freeze them; returns self."""
        for module in (self.unet, self.vae, self.text_encoder):
            # Only pass what changes: diffusers warns on any dtype cast, even a no-op one.
            if dtype is not None and module.dtype != dtype:
                module.to(dtype=dtype)
            if device is not None:
                module.to(device=device)
            module.requires_grad_(False)
            module.eval()
        return self

    def noise_scheduler(self) -> DDPMScheduler:
        """The training scheduler (forward process, ``add_noise``)."""
        return DDPMScheduler.from_config(self.scheduler_config)

    def ddim_scheduler(self) -> DDIMScheduler:
        """A fresh DDIM scheduler with the model's beta schedule, for sampling."""
        return DDIMScheduler.from_config(self.scheduler_config)


def check_pretrained(path: str | Path) -> Path:
    """The folder as a Path, or a clear error when it is missing or not a diffusers folder."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"pretrained model folder {str(folder)!r} does not exist; CDM loads weights from a local "
            "Stable-Diffusion-style diffusers folder only (unet/, vae/, text_encoder/, tokenizer/, "
            "scheduler/) and never downloads"
        )
    if not folder.is_dir():
        raise ValueError(f"pretrained path {str(folder)!r} is a file, expected a diffusers folder")
    missing = [name for name in SUBFOLDERS if not any((folder / name / marker).is_file() for marker in _MARKERS[name])]
    if missing:
        raise ValueError(
            f"{str(folder)!r} is not a Stable-Diffusion-style diffusers folder: missing or incomplete "
            f"{', '.join(name + '/' for name in missing)} (expected unet/, vae/, text_encoder/, "
            "tokenizer/, scheduler/ as written by diffusers' save_pretrained)"
        )
    return folder


def load_components(
    path: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> CDMComponents:
    """Load the frozen components from a local diffusers folder (no network)."""
    folder = check_pretrained(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    model_kwargs = {**kwargs, "low_cpu_mem_usage": False}  # no `accelerate` needed, no warning
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **model_kwargs)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **model_kwargs)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", **kwargs)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", **kwargs)
    scheduler_config = dict(DDPMScheduler.load_config(folder / "scheduler", **kwargs))
    components = CDMComponents(unet, vae, text_encoder, tokenizer, scheduler_config, source=str(folder))
    return components.to(device=device, dtype=dtype)


def save_components(components: CDMComponents, path: str | Path) -> Path:
    """Write the components as a diffusers folder that :func:`load_components` reads back."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.tokenizer.save_pretrained(folder / "tokenizer")
    DDPMScheduler.from_config(components.scheduler_config).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def from_pipeline(pipeline: Any) -> CDMComponents:
    """Components of a diffusers pipeline object (anything with unet/vae/text_encoder/tokenizer/scheduler)."""
    names = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    absent = [name for name in names if getattr(pipeline, name, None) is None]
    if absent:
        raise TypeError(f"pipeline lacks {', '.join(absent)}: expected a Stable-Diffusion-style pipeline")
    components = CDMComponents(
        pipeline.unet,
        pipeline.vae,
        pipeline.text_encoder,
        pipeline.tokenizer,
        dict(pipeline.scheduler.config),
        source=type(pipeline).__name__,
    )
    return components.to()


# --- randomly initialised models from configs ----------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer(folder: str | Path, model_max_length: int = 16) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with a 56-token vocabulary (letters, no merges), written to ``folder``.

    Real CLIP vocabularies are not shipped by any pip package; the learned anomaly tokens do not go
    through the tokenizer anyway, it only supplies the special token ids and empty prompts.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for letter in _LETTERS:
            vocab[letter + suffix] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {"model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def _sd_scheduler_config() -> dict[str, Any]:
    # Stable Diffusion 1.x's schedule: scaled-linear betas, epsilon prediction, "leading" spacing.
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


def tiny_configs(image_size: int = 32) -> dict[str, dict[str, Any]]:
    """Configs of a tiny SD-shaped model (about 0.3M parameters in all; latent = image / 4)."""
    unet = {
        "sample_size": image_size // 4,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (8, 16, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": image_size,
    }
    text = {
        "vocab_size": 2 + 2 * len(_LETTERS),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": _sd_scheduler_config()}


def sd15_configs() -> dict[str, dict[str, Any]]:
    """Configs with Stable Diffusion 1.5's shapes (UNet 860M, VAE 84M, CLIP ViT-L/14 text 123M params)."""
    unet = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
    vae = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    }
    text = {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": _sd_scheduler_config()}


def build_components(configs: dict[str, dict[str, Any]], tokenizer: CLIPTokenizer, seed: int = 0) -> CDMComponents:
    """Randomly initialised components from :func:`tiny_configs` / :func:`sd15_configs`-style configs."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    return CDMComponents(unet, vae, text_encoder, tokenizer, dict(configs["scheduler"])).to()


def make_tiny_pretrained(folder: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny randomly initialised SD-style diffusers folder (a few MB) for tests and examples."""
    folder = Path(folder)
    # The tokenizer is written in place; save_components then rewrites it in its own format.
    tokenizer = tiny_tokenizer(folder / "tokenizer")
    components = build_components(tiny_configs(image_size), tokenizer, seed=seed)
    save_components(components, folder)
    return folder
