"""Train a DCGAN, VAE or diffusion generator on an image set and save it as a synthgen checkpoint as it goes.

Seeded and reproducible on CPU: one ``torch.Generator`` shuffles, another draws the noise, and the global
RNG (dropout) is seeded too; all three are saved with the optimisers at each checkpoint, so ``resume``
continues exactly where an uninterrupted run would be. On CUDA, training uses autocast + GradScaler (fp16).

Checkpoints land in ``out`` through :mod:`synthgen.checkpoint` (config.json + model.safetensors, plus the
training state), with a sample grid ``samples/epoch-NNN.png`` per checkpoint for eyeballing progress. A
checkpoint is written after the last epoch and, before it, every ``save_every`` epochs or, by default, once a
minute: a stop loses at most the epochs since the last one.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from synthgen import checkpoint as ckpt
from synthgen import storage
from synthgen.diffusion_trainer import DiffusionTrainer
from synthgen.errors import SynthgenError, stops_held
from synthgen.generate.device import resolve_device
from synthgen.generate.plan import image_seeds
from synthgen.generate.sampling import NonFiniteOutput, generate
from synthgen.imaging import image_grid, save_png
from synthgen.models import DCGANConfig, DiffusionConfig, VAEConfig, config_to_dict
from synthgen.models.dcgan import describe_sizes, upsampling_plan
from synthgen.models.diffusion import diffusion_levels
from synthgen.readers import ImageSet, load_images
from synthgen.splits import real_share_rows
from synthgen.trainers import GANTrainer, Trainer, VAETrainer

ARCHS = ("dcgan", "vae", "diffusion")
# Per-arch defaults for the flags left unset. The dcgan ones are the bundled model's recipe, the one measured
# (docs/evaluation.md): on BreastMNIST's 546 images it reached FID 15 after ~20,000 optimiser steps (600
# epochs), against 65 after 150 epochs, and the old defaults (width 256, batch 64, 50 epochs = 400 steps)
# gave a collapsed generator (recall 0.00). Epochs are therefore counted from a step budget, capped for very
# small sets (a 128-image subset did well at 1,000 epochs = 8,000 steps).
DEFAULTS: dict[str, dict[str, Any]] = {
    "dcgan": {"lr": 2e-4, "latent_dim": 100, "width": 128, "batch_size": 16},
    "vae": {"lr": 1e-3, "latent_dim": 32, "width": 128, "batch_size": 64, "epochs": 50},
    # diffusion: common small-UNet settings (DDPM-style lr and batch), NOT yet chosen by measurement here
    # (docs/design.md); its noise size is fixed by the image (C*H*W), so --latent-dim is refused
    "diffusion": {"lr": 2e-4, "latent_dim": None, "width": 64, "batch_size": 32},
}
GAN_STEPS, GAN_MAX_EPOCHS = 20_000, 1_000
DIFFUSION_STEPS, DIFFUSION_MAX_EPOCHS = 20_000, 2_000
GRID_COLUMNS = 8
GRID_SCALE = 3
# without --save-every: save after the first epoch ending this long after the last save. On small sets an
# epoch takes well under a second and saving (weights, optimiser state, sample grid) cost more than training.
SAVE_INTERVAL_S = 60.0


@dataclass
class TrainConfig:
    """What ``synthgen train`` was asked to do; ``None`` means "the architecture's / data's default"."""

    data: str
    out: str
    arch: str = "dcgan"
    epochs: int | None = None  # default: default_epochs()
    batch_size: int | None = None  # default: the arch's, or the saved run's on --resume
    lr: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    image_size: tuple[int, int] | int | None = None  # (H, W) or a square's side; default: the data's size
    latent_dim: int | None = None
    width: int | None = None
    class_names: list[str] | None = None  # override the data's names (same count)
    conditional: bool | None = None  # default: True when the data has more than one class
    resume: bool = False
    overwrite: bool = False
    split: str = "train"
    data_license: str | None = None  # what the training data's terms are (e.g. CC-BY-4.0); None: not declared
    data_citation: str | None = None  # how to cite the training data
    real_share: float | None = None  # train on eval's --real-fractions share of the fit part (synthgen.splits)
    save_every: int | None = None  # epochs between checkpoints; None: every SAVE_INTERVAL_S (always the last)

    def check(self) -> None:
        """Refuse impossible settings, naming the flag."""
        if self.arch not in ARCHS:
            raise SynthgenError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.epochs is not None and self.epochs < 1:
            raise SynthgenError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 2:  # BatchNorm cannot train on one image at a time
            raise SynthgenError(f"--batch-size must be at least 2, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise SynthgenError(f"--lr must be positive, got {self.lr}")
        if self.image_size is not None and self.arch == "diffusion":
            if diffusion_levels(*self.size_hw()) is None:
                raise SynthgenError(f"--image-size {'x'.join(map(str, self.size_hw()))} is not one a diffusion "
                                    "model makes: sides of 16-512 px that halve exactly down to 8 px or fewer "
                                    "(28, 32, 64, 128, 256, 256x192, ...)")
        elif self.image_size is not None and upsampling_plan(*self.size_hw()) is None:
            raise SynthgenError(f"--image-size {'x'.join(map(str, self.size_hw()))} is not one the {self.arch} "
                                f"family makes: {describe_sizes()}")
        if self.arch == "diffusion" and self.latent_dim is not None:
            raise SynthgenError("--latent-dim: a diffusion model's noise is one value per pixel (C*H*W); "
                                "drop --latent-dim (--width sets its size)")
        for flag, value in (("--latent-dim", self.latent_dim), ("--width", self.width)):
            if value is not None and value < 1:
                raise SynthgenError(f"{flag} must be a positive integer, got {value}")
        if self.resume and self.overwrite:
            raise SynthgenError("--resume and --overwrite contradict each other; pick one")
        if not 0 <= self.seed < 2**63:
            raise SynthgenError(f"--seed must be in [0, 2**63), got {self.seed}")
        if self.save_every is not None and self.save_every < 1:
            raise SynthgenError(f"--save-every must be a positive number of epochs, got {self.save_every}")
        if self.real_share is not None and not 0 < self.real_share <= 1:
            raise SynthgenError(f"--real-share must be in (0, 1], got {self.real_share:g}")
        for flag, value in (("--data-license", self.data_license), ("--data-citation", self.data_citation)):
            if value is not None and not value.strip():
                raise SynthgenError(f"{flag} must not be empty; leave it out when the terms are unknown")

    def size_hw(self) -> tuple[int, int] | None:
        """--image-size as (H, W); None when not given."""
        if self.image_size is None:
            return None
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return int(self.image_size[0]), int(self.image_size[1])

    def setting(self, name: str) -> Any:
        value = getattr(self, name)
        return DEFAULTS[self.arch][name] if value is None else value


def default_epochs(arch: str, num_images: int, batch_size: int) -> int:
    """``--epochs`` when none is given.

    Args:
        arch: "dcgan" or "vae".
        num_images: training images.
        batch_size: images per optimiser step.

    Returns:
        A GAN: enough epochs for GAN_STEPS optimiser steps, at most GAN_MAX_EPOCHS. A VAE: its fixed default.
    """
    if arch not in ("dcgan", "diffusion"):
        return DEFAULTS[arch]["epochs"]
    budget, cap = (GAN_STEPS, GAN_MAX_EPOCHS) if arch == "dcgan" else (DIFFUSION_STEPS, DIFFUSION_MAX_EPOCHS)
    steps_per_epoch = num_images // min(batch_size, num_images)  # Trainer.run_epoch drops the ragged tail
    return max(1, min(cap, -(-budget // steps_per_epoch)))


@dataclass
class TrainResult:
    """Where the checkpoint is, its fingerprint, and the mean losses of every epoch (resumed ones too)."""

    out: str
    fingerprint: str
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train (or resume training) a generator, checkpointing it as it goes and after the last epoch.

    Args:
        config: data, output directory, architecture and hyper-parameters.
        progress: show a tqdm bar per epoch with the running losses.

    Returns:
        The output directory, the final checkpoint's fingerprint and the per-epoch losses.
    """
    config.check()
    _check_out(config)
    data = _real_share(load_images(config.data, config.split), config.real_share)
    device = training_device(config.device)
    images, class_names = prepare_images(data, config)
    if len(images) < 2:
        raise SynthgenError(f"{config.data}: {len(images)} image(s) in split {config.split!r}; training needs "
                            "at least 2")
    saved = ckpt.read_config(config.out) if config.resume else None
    config = _with_defaults(config, len(images), saved)
    meta = _checkpoint_config(config, data, images.shape[1:], class_names)
    if saved is not None:
        meta = _resumed_config(config, meta, saved)
    # what the weights depend on beside the flags and data (CPU sums split by thread count), so a checkpoint
    # says how to reproduce it; a resumed run records its own
    meta.training.update(torch=torch.__version__, device=device.type,
                         torch_threads=torch.get_num_threads() if device.type == "cpu" else None)
    trainer = _make_trainer(config, meta, device)
    history = _resume(config, meta, trainer) if config.resume else []
    labels = torch.from_numpy(data.labels) if meta.conditional else None
    started, fingerprint = time.perf_counter(), ""
    last_save = started
    for epoch in range(len(history) + 1, config.epochs + 1):
        bar = tqdm(total=len(images), desc=f"epoch {epoch}/{config.epochs}", unit="img",
                   disable=not progress, leave=False)
        with bar:
            history.append(trainer.run_epoch(images, labels, config.batch_size, bar))
        if _save_due(config, epoch, last_save):
            fingerprint = _save_epoch(config, meta, trainer, history)
            last_save = time.perf_counter()
        if progress:
            tqdm.write(f"epoch {epoch}/{config.epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in history[-1].items()))
    if not fingerprint:  # resumed a run that was already complete: report what is on disk
        fingerprint = ckpt.load_checkpoint(config.out).fingerprint
    return TrainResult(config.out, fingerprint, history, time.perf_counter() - started)


def _with_defaults(config: TrainConfig, num_images: int, saved: ckpt.CheckpointConfig | None) -> TrainConfig:
    """The config with --batch-size and --epochs filled in; a resumed run keeps its ``saved`` batch size."""
    batch_size = config.batch_size
    if batch_size is None and saved is not None:
        batch_size = saved.training.get("batch_size")
    if batch_size is None:
        batch_size = config.setting("batch_size")
    epochs = config.epochs or default_epochs(config.arch, num_images, batch_size)
    return replace(config, batch_size=batch_size, epochs=epochs)


def training_device(name: str) -> torch.device:
    """The ``--device`` flag as a torch device (:func:`synthgen.generate.device.resolve_device`)."""
    try:
        return resolve_device(name)
    except ValueError as err:
        raise SynthgenError(f"--device {err}") from None


def prepare_images(data: ImageSet, config: TrainConfig) -> tuple[torch.Tensor, list[str]]:
    """The data as a uint8 (uint16 for 16-bit data) ``(N, C, H, W)`` tensor at the training size, and the
    class names to save. Without --image-size the data's own size is kept, non-square too, when the model
    family makes it.

    Returns:
        (images, class_names); class_names is empty for an unconditional model.
    """
    _, h, w, c = data.images.shape
    size = config.size_hw() or (h, w)
    makes = diffusion_levels(h, w) if config.arch == "diffusion" else upsampling_plan(h, w)
    if config.image_size is None and makes is None:
        raise SynthgenError(f"{data.source}: images are {h}x{w} (HxW), a size the {config.arch} family does not "
                            f"make; pass --image-size H[xW] to resize them ({describe_sizes()})")
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W) uint8 or uint16
    if (h, w) != size:
        images = _resize(images, size)
    names = data.class_names
    if config.class_names is not None:
        if len(config.class_names) != len(names) or len(set(config.class_names)) != len(names) \
                or not all(config.class_names):
            raise SynthgenError(f"--class-names needs {len(names)} distinct names for {data.source} "
                                f"(its labels are {', '.join(names)}), got {','.join(config.class_names)}")
        names = list(config.class_names)
    conditional = config.conditional if config.conditional is not None else len(names) > 1
    return images, (names if conditional else [])


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with antialiasing (a triangle filter as wide as the scale when shrinking): no ringing, so no
    pixel leaves the range its neighbours span (why this filter: docs/design.md). Keeps the dtype."""
    top = 65535 if images.dtype == torch.uint16 else 255
    out = []
    for chunk in images.split(1024):  # bounded memory for big sets
        x = F.interpolate(chunk.float(), size=size, mode="bilinear", antialias=True,
                          align_corners=False)  # (B, C, H, W)
        out.append(x.round().clamp(0, top).to(torch.int32).to(images.dtype))
    return torch.cat(out)


def _checkpoint_config(config: TrainConfig, data: ImageSet, shape: tuple[int, ...],
                       class_names: list[str]) -> ckpt.CheckpointConfig:
    channels, height, width = int(shape[0]), int(shape[1]), int(shape[2])
    size = height if height == width else [height, width]  # squares as before 0.7: an int
    common = {"latent_dim": config.setting("latent_dim"), "image_size": size, "channels": channels,
              "num_classes": len(class_names), "width": config.setting("width")}
    try:
        if config.arch == "diffusion":
            del common["latent_dim"]
            arch_config = DiffusionConfig(**common)
            common["latent_dim"] = arch_config.latent_dim
        else:
            arch_config = DCGANConfig(**common) if config.arch == "dcgan" else VAEConfig(**common)
            _check_width(arch_config)
    except ValueError as err:
        raise SynthgenError(f"{data.source}: cannot build a {config.arch} for it ({err})") from None
    training = {"data": config.data, "data_sha256": data.sha256, "split": config.split,
                "data_class_names": data.class_names, "num_images": len(data.images), "epochs": 0,
                "seed": config.seed, "lr": config.setting("lr"), "batch_size": config.batch_size,
                "arch": config.arch, **_declared(config, data, shape)}
    return ckpt.CheckpointConfig(arch=config.arch, model_config=config_to_dict(arch_config),
                                 image_shape=[channels, height, width], latent_dim=common["latent_dim"],
                                 class_names=class_names, training=training, pixels=ckpt.pixel_format(data.bit_depth))


def _declared(config: TrainConfig, data: ImageSet, shape: tuple[int, ...]) -> dict[str, Any]:
    """What the checkpoint records only when known, so a checkpoint trained without it keeps the fingerprint
    it had before synthgen recorded these: the data's license and citation (``--data-license``,
    ``--data-citation``; the dataset card reads them) and its pixel spacing at the training size."""
    out: dict[str, Any] = {}
    if config.real_share is not None:
        out["real_share"] = config.real_share
    if config.data_license is not None:
        out["data_license"] = config.data_license.strip()
    if config.data_citation is not None:
        out["data_citation"] = config.data_citation.strip()
    if data.pixel_spacing:  # resizing to the training size scales it: [row mm * H / H', col mm * W / W']
        _, h, w, _ = data.images.shape
        row, col = data.pixel_spacing
        out["pixel_spacing"] = [round(row * h / int(shape[1]), 6), round(col * w / int(shape[2]), 6)]
    return out


def _real_share(data: ImageSet, share: float | None) -> ImageSet:
    """The images ``synthgen eval --real-fractions share`` gives its classifiers, when ``share`` is set."""
    if share is None:
        return data
    rows = real_share_rows(data.labels, share)
    return replace(data, images=data.images[rows], labels=data.labels[rows])


def _check_width(arch_config: DCGANConfig | VAEConfig) -> None:
    dec = arch_config if isinstance(arch_config, DCGANConfig) else arch_config.decoder_config()
    # the generator halves the width once per stage; it must not reach zero channels
    smallest = 2 ** (dec.num_upsamples + 1)
    if dec.width < smallest:
        raise SynthgenError(f"--width must be at least {smallest} for {dec.hw[0]}x{dec.hw[1]} "
                            f"images, got {dec.width}")


def _check_out(config: TrainConfig) -> None:
    """An ``--out`` that holds a checkpoint is only touched with --resume or --overwrite."""
    loc = storage.locate(config.out)
    has_ckpt = storage.exists(loc, loc.join(ckpt.CONFIG_FILE))
    if config.resume:
        if not storage.exists(loc, loc.join(ckpt.STATE_FILE)):
            raise SynthgenError(f"{config.out}: nothing to resume (no {ckpt.STATE_FILE}); drop --resume")
    elif has_ckpt and not config.overwrite:
        raise SynthgenError(f"{config.out}: already holds a checkpoint; pass --resume to continue it, "
                            "--overwrite to replace it, or choose another --out")
    elif storage.exists(loc, loc.root) and not storage.is_dir(loc, loc.root):
        raise SynthgenError(f"{config.out}: exists and is not a directory (--out)")
    elif has_ckpt:  # --overwrite: drop what the old run left that this one might not replace
        stale = [loc.join(ckpt.STATE_FILE), loc.join(ckpt.STATE_META_FILE)]
        stale += [p for p in storage.list_files(loc, loc.join("samples")) if p.rsplit("/", 1)[-1].startswith("epoch-")]
        for path in stale:
            if storage.exists(loc, path):
                loc.fs.delete_file(path)


def _resumed_config(config: TrainConfig, fresh: ckpt.CheckpointConfig,
                    saved: ckpt.CheckpointConfig) -> ckpt.CheckpointConfig:
    """The ``saved`` config, after checking that the flags and data still describe the same run."""
    problems = []
    if saved.arch != fresh.arch:
        problems.append(f"--arch is {fresh.arch} but the checkpoint is {saved.arch}")
    if saved.training.get("data_sha256") != fresh.training["data_sha256"]:
        problems.append("--data differs from the data it was trained on (sha256 changed)")
    if saved.training.get("real_share") != fresh.training.get("real_share"):
        problems.append(f"--real-share is {fresh.training.get('real_share')} but the run was trained with "
                        f"{saved.training.get('real_share')}")
    if saved.image_shape != fresh.image_shape or saved.class_names != fresh.class_names:
        problems.append(f"the image shape/classes differ ({saved.image_shape} {saved.class_names} vs "
                        f"{fresh.image_shape} {fresh.class_names})")
    if problems:
        raise SynthgenError(f"{config.out}: cannot resume: {'; '.join(problems)}")
    # without --lr the run goes on at the rate it was saved with, as it does without --batch-size
    lr = config.lr if config.lr is not None else saved.training.get("lr", config.setting("lr"))
    saved.training.update(lr=lr, batch_size=config.batch_size)
    return saved


def _resume(config: TrainConfig, meta: ckpt.CheckpointConfig, trainer: Trainer) -> list[dict[str, float]]:
    tensors, state_meta = ckpt.load_training_state(config.out)
    if state_meta.get("epoch") != meta.training.get("epochs"):
        # the two are written one after the other; a crash in between leaves them out of step
        raise SynthgenError(f"{config.out}: checkpoint is at epoch {meta.training.get('epochs')} but its "
                            f"training state at {state_meta.get('epoch')}; cannot resume exactly")
    generator_state = ckpt.load_checkpoint(config.out).model.state_dict()
    history = trainer.load_state(tensors, state_meta, generator_state, config.out)
    trainer.set_lr(meta.training["lr"])  # the optimisers' saved state carries the old rate
    return history


def _make_trainer(config: TrainConfig, meta: ckpt.CheckpointConfig, device: torch.device) -> Trainer:
    torch.manual_seed(config.seed)  # weight init and dropout
    cls = {"dcgan": GANTrainer, "vae": VAETrainer, "diffusion": DiffusionTrainer}[config.arch]
    trainer = cls(meta.model_config, lr=config.setting("lr"), seed=config.seed, device=device)
    trainer.bit_depth = meta.bit_depth
    return trainer


def _save_due(config: TrainConfig, epoch: int, last_save: float) -> bool:
    """Whether to checkpoint after ``epoch``. Saving never changes the weights (its RNGs are its own), so the
    last epoch's checkpoint is the same whichever epochs were saved before it."""
    if epoch == config.epochs:
        return True
    if config.save_every is not None:
        return epoch % config.save_every == 0
    return time.perf_counter() - last_save >= SAVE_INTERVAL_S


def _save_epoch(config: TrainConfig, meta: ckpt.CheckpointConfig, trainer: Trainer,
                history: list[dict[str, float]]) -> str:
    """Checkpoint, training state and sample grid after an epoch; returns the fingerprint."""
    meta.training.update(epochs=len(history), final_losses=history[-1])
    trainer.before_save()
    with stops_held():  # a stop between the two would leave them an epoch apart, and --resume refusing
        fingerprint = ckpt.save_checkpoint(config.out, trainer.generator, meta)
        tensors, state_meta = trainer.state()
        state_meta.update(epoch=len(history), history=history)
        ckpt.save_training_state(config.out, tensors, state_meta)
    _save_samples(config, meta, trainer, len(history))
    return fingerprint


def _save_samples(config: TrainConfig, meta: ckpt.CheckpointConfig, trainer: Trainer, epoch: int) -> None:
    loc = storage.locate(config.out)
    if not loc.is_local:  # a preview grid is for local eyeballing; skip it on object stores
        return
    rows = max(meta.num_classes, 1) if meta.conditional else 4
    seeds = np.tile(image_seeds(config.seed, np.arange(GRID_COLUMNS)), rows) if meta.conditional \
        else image_seeds(config.seed, np.arange(rows * GRID_COLUMNS))
    labels = np.repeat(np.arange(rows, dtype=np.int64), GRID_COLUMNS) if meta.conditional else None
    generator = trainer.generator
    generator.eval()
    try:
        images = generate(generator, seeds, labels, bit_depth=meta.bit_depth)  # (rows * cols, H, W, C)
    except NonFiniteOutput as err:  # a diverged generator: say so; the grid would be arbitrary pixels
        print(f"warning: epoch {epoch}: no sample grid: {err}", file=sys.stderr, flush=True)
        return
    finally:
        generator.train()
    os.makedirs(os.path.join(loc.root, "samples"), exist_ok=True)
    save_png(os.path.join(loc.root, "samples", f"epoch-{epoch:03d}.png"),
             image_grid(images, GRID_COLUMNS), scale=GRID_SCALE)
