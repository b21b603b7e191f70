"""The optimisation steps behind ``synthgen train``: one trainer per architecture family.

A trainer owns the networks, optimisers, random generators and (on CUDA) grad scalers, runs one epoch at a
time, and turns everything that resuming needs into a flat dict of tensors plus JSON-able metadata, so it
can be stored as safetensors (never pickle). :mod:`synthgen.train` drives it and writes the files.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthgen.errors import SynthgenError
from synthgen.models import VAE, DCGANConfig, DCGANDiscriminator, DCGANGenerator, VAEConfig

ADAM_BETAS = {"dcgan": (0.5, 0.999), "vae": (0.9, 0.999)}
EMA_DECAY = 0.999
CALIBRATION_BATCHES, CALIBRATION_SIZE = 8, 64  # generator samples that re-estimate BatchNorm statistics


class Trainer:
    """Shared machinery: batching, RNGs, mixed precision and the resumable state."""

    arch = ""

    def __init__(self, lr: float, seed: int, device: torch.device):
        self.device = device
        self.amp = device.type == "cuda"
        self.shuffle = torch.Generator().manual_seed(seed)  # CPU: the order is the same on any device
        self.noise = torch.Generator(device=device).manual_seed(seed + 1)
        self.generator: nn.Module
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        self.modules: dict[str, nn.Module] = {}  # saved in the training state (not the generator)
        self.steps = 0
        self.seed = seed
        self.bit_depth = 8  # of the pixels run_epoch gets; pixel p trains as p / ((2**bits - 1) / 2) - 1
        self.label_pool: torch.Tensor | None = None  # (N,) the training labels, once an epoch has run

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.float16)

    def step(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        raise NotImplementedError

    def before_save(self) -> None:
        """Hook: bring ``self.generator`` into the state the checkpoint should hold."""

    def run_epoch(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int,
                  bar: Any = None) -> dict[str, float]:
        """One pass over ``images`` (uint8, or uint16 for 16-bit, ``(N, C, H, W)``) in a seeded random order.

        Returns:
            The epoch's mean of every loss the step reports.
        """
        n = len(images)
        self.label_pool = labels
        size = min(batch_size, n)
        perm = torch.randperm(n, generator=self.shuffle)
        half = (2**self.bit_depth - 1) / 2  # 127.5 for 8 bits (as always), 32767.5 for 16: the depth's max / 2
        totals: dict[str, float] = {}
        seen = 0
        # the ragged tail is dropped: a batch of one breaks BatchNorm, and the next epoch reshuffles anyway
        for start in range(0, n - size + 1, size):
            idx = perm[start:start + size]
            x = images[idx].to(self.device).float().div_(half).sub_(1.0)  # (B, C, H, W) in [-1, 1]
            y = labels[idx].to(self.device) if labels is not None else None  # (B,)
            self.steps += 1
            for key, value in self.step(x, y).items():
                totals[key] = totals.get(key, 0.0) + value * len(idx)
            seen += len(idx)
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix({k: f"{v / seen:.4g}" for k, v in totals.items()}, refresh=False)
        return {k: v / seen for k, v in totals.items()}

    def _backward(self, name: str, loss: torch.Tensor) -> None:
        opt, scaler = self.optimizers[name], self.scalers[name]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def _add_optimizer(self, name: str, params, lr: float) -> None:
        self.optimizers[name] = torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS[self.arch])
        self.scalers[name] = torch.amp.GradScaler("cuda", enabled=self.amp)

    def set_lr(self, lr: float) -> None:
        """Train on at learning rate ``lr`` (every optimiser, every parameter group)."""
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything but the generator that an exact resume needs: tensors + JSON-able metadata."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"arch": self.arch, "steps": self.steps, "optimizers": {}, "scalers": {}}
        for name, module in self.modules.items():
            tensors.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
        for name, opt in self.optimizers.items():
            opt_tensors, meta["optimizers"][name] = _flatten_optimizer(opt.state_dict())
            tensors.update({f"opt.{name}.{k}": v for k, v in opt_tensors.items()})
            meta["scalers"][name] = self.scalers[name].state_dict()
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.shuffle"] = self.shuffle.get_state()
        tensors["rng.noise"] = self.noise.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   generator_state: dict[str, torch.Tensor], source: str) -> list[dict[str, float]]:
        """Restore what :meth:`state` saved (plus the generator's weights).

        Returns:
            The per-epoch loss history recorded so far.
        """
        if meta.get("arch") != self.arch:
            raise SynthgenError(f"{source}: training state is for {meta.get('arch')!r}, not {self.arch!r}")
        try:
            self.generator.load_state_dict(generator_state)
            for name, module in self.modules.items():
                module.load_state_dict(_with_prefix(tensors, f"{name}."))
            for name, opt in self.optimizers.items():
                opt.load_state_dict(_unflatten_optimizer(_with_prefix(tensors, f"opt.{name}."),
                                                         meta["optimizers"][name]))
                self.scalers[name].load_state_dict(meta["scalers"][name])
            self.steps = int(meta["steps"])
            torch.set_rng_state(tensors["rng.torch"])
            self.shuffle.set_state(tensors["rng.shuffle"])
            self.noise.set_state(tensors["rng.noise"])
            if self.device.type == "cuda" and "rng.cuda" in tensors:
                torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        except (KeyError, RuntimeError, ValueError, TypeError) as err:
            raise SynthgenError(f"{source}: training state does not fit this model ({err}); "
                                "retrain with --overwrite") from None
        return list(meta.get("history", []))


class GANTrainer(Trainer):
    """Non-saturating GAN loss (BCE with logits); projection discriminator when conditional."""

    arch = "dcgan"

    def __init__(self, model_config: dict[str, Any], lr: float, seed: int, device: torch.device):
        super().__init__(lr, seed, device)
        config = DCGANConfig(**model_config)
        self.latent_dim = config.latent_dim
        self.trained = DCGANGenerator(config).to(device)
        # the critic scales with the generator (width 128 -> 64, its usual size), so small test models stay fast
        self.discriminator = DCGANDiscriminator(config, width=max(16, config.width // 2)).to(device)
        self.trained.apply(dcgan_init)
        self.discriminator.apply(dcgan_init)
        # the checkpoint holds an exponential moving average of the weights: smoother, fewer GAN artefacts
        self.generator = copy.deepcopy(self.trained).requires_grad_(False)
        if self.discriminator.label_proj is not None:
            # PyTorch's N(0, 1) embedding times a ~6k-wide feature vector gives logits in the hundreds, which
            # saturates the BCE at once; from zero the critic starts unconditional and learns the projection
            nn.init.zeros_(self.discriminator.label_proj.weight)
        self.modules = {"disc": self.discriminator, "gen_trained": self.trained}
        self._add_optimizer("gen", self.trained.parameters(), lr)
        self._add_optimizer("disc", self.discriminator.parameters(), lr)

    def step(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        z = torch.randn(len(x), self.latent_dim, generator=self.noise, device=self.device)  # (B, latent)
        with self.autocast():
            fake = self.trained(z, y)  # (B, C, H, W); fakes reuse the real batch's labels
            real_logits = self.discriminator(x, y)  # (B,)
            fake_logits = self.discriminator(fake.detach(), y)  # (B,)
            loss_d = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + \
                F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        self._backward("disc", loss_d)
        with self.autocast():
            gen_logits = self.discriminator(fake, y)  # (B,)
            # non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z)))
            loss_g = F.binary_cross_entropy_with_logits(gen_logits, torch.ones_like(gen_logits))
        self._backward("gen", loss_g)
        self._update_ema()
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up: early on the average must follow the fast-moving weights, or short runs save the init
        decay = min(EMA_DECAY, (1 + self.steps) / (10 + self.steps))
        for avg, cur in zip(self.generator.parameters(), self.trained.parameters()):
            avg.lerp_(cur, 1 - decay)

    @torch.no_grad()
    def before_save(self) -> None:
        """Re-estimate the averaged generator's BatchNorm statistics from its own outputs.

        The trained weights' running statistics do not fit their average, and eval-mode samples made with
        mismatched statistics come out washed out and less varied; a few forward passes fix that.
        """
        rng = torch.Generator().manual_seed(self.seed + 2)  # fixed, so the training RNGs are untouched
        norms = [m for m in self.generator.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the calibration passes
        self.generator.train()
        for _ in range(CALIBRATION_BATCHES):
            z = torch.randn(CALIBRATION_SIZE, self.latent_dim, generator=rng)  # (B, latent)
            y = None
            if self.label_pool is not None:  # classes in their training proportions
                y = self.label_pool[torch.randint(len(self.label_pool), (CALIBRATION_SIZE,), generator=rng)]
                y = y.to(self.device)  # (B,)
            self.generator(z.to(self.device), y)
        for norm in norms:
            norm.momentum = 0.1
        self.generator.eval()


class VAETrainer(Trainer):
    """Per-image loss = summed squared error over pixels (on the [-1, 1] scale) + KL(q(z|x) || N(0, I))."""

    arch = "vae"

    def __init__(self, model_config: dict[str, Any], lr: float, seed: int, device: torch.device):
        super().__init__(lr, seed, device)
        self.vae = VAE(VAEConfig(**model_config)).to(device)
        self.generator = self.vae.decoder  # what the checkpoint holds
        self.modules = {"enc": self.vae.encoder}
        self._add_optimizer("vae", self.vae.parameters(), lr)

    def step(self, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
        with self.autocast():
            recon, mu, logvar = self.vae(x, y, generator=self.noise)  # (B, C, H, W), (B, latent) x2
        b = len(x)
        rec = F.mse_loss(recon.float(), x, reduction="sum") / b
        mu, logvar = mu.float(), logvar.float()  # exp() of fp16 overflows early
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b
        loss = rec + kl
        self._backward("vae", loss)
        return {"loss": loss.item(), "recon": rec.item(), "kl": kl.item()}


def dcgan_init(module: nn.Module) -> None:
    """Radford et al.'s initialisation: conv/linear weights N(0, 0.02), BatchNorm scale N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _with_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser's state_dict -> {"<param>.<key>": tensor} and the JSON-able rest."""
    tensors, scalars = {}, {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}
