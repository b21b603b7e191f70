"""A local Hugging Face diffusers folder as a synthgen model, so a UNet trained elsewhere can be mass-produced.

Accepted layouts (``--model DIR``):

- a ``UNet2DModel`` folder: ``config.json`` (``"_class_name": "UNet2DModel"``) +
  ``diffusion_pytorch_model.safetensors`` + ``scheduler_config.json`` (or a sibling ``../scheduler/``);
- a pipeline folder: ``model_index.json`` with ``unet/`` and ``scheduler/`` as above.

Unconditional or class-conditional (``num_class_embeds``: its classes are named "0", "1", ...; guidance is
refused, since which embedding, if any, was trained as the null class is not recorded). Weights are read as
safetensors through :mod:`synthgen.checkpoint` only: ``.bin``, ``.pt`` and ``.ckpt`` files are pickles, and a
folder that has only those is refused in one line without opening them.

Everything up to the weights is JSON, so the ``synthgen run`` driver inspects such a folder without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from synthgen import storage
from synthgen.errors import SynthgenError

UNET_CONFIG = "config.json"
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG = "scheduler_config.json"
PIPELINE_INDEX = "model_index.json"
PICKLED = ("diffusion_pytorch_model.bin", "pytorch_model.bin", "model.pt", "model.ckpt",
           "diffusion_pytorch_model.pt", "diffusion_pytorch_model.ckpt")
ARCH = "diffusers"


@dataclass
class DiffusersFolder:
    """Where a diffusers UNet's files are, found by :func:`find`."""

    loc: storage.Location
    unet_dir: str  # path of the folder holding config.json and the weights
    scheduler_path: str

    @property
    def weights_path(self) -> str:
        return f"{self.unet_dir}/{UNET_WEIGHTS}"

    def weights(self) -> bytes:
        return storage.read_bytes(self.loc, self.weights_path)

    def files(self) -> dict[str, str]:
        """What a copy of this model needs: {path relative to the folder: path in the copy}. A scheduler found
        beside a UNet folder goes into the copy itself."""
        root = self.loc.root.rstrip("/") + "/"
        paths = [f"{self.unet_dir}/{UNET_CONFIG}", self.weights_path, self.scheduler_path]
        if storage.exists(self.loc, self.loc.join(PIPELINE_INDEX)):
            paths.append(self.loc.join(PIPELINE_INDEX))
        relative = [p[len(root):] for p in paths]
        return {r: SCHEDULER_CONFIG if r.startswith("..") else r for r in relative}

    def config(self):
        """The folder as a :class:`synthgen.checkpoint.CheckpointConfig` (arch ``diffusers``)."""
        from synthgen.checkpoint import CheckpointConfig

        unet = _json(self.loc, f"{self.unet_dir}/{UNET_CONFIG}")
        scheduler = _json(self.loc, self.scheduler_path)
        size, channels = unet.get("sample_size"), unet.get("in_channels", 3)
        height, width = (size, size) if isinstance(size, int) else tuple(size or (0, 0))
        if not (isinstance(height, int) and height > 0 and width > 0) or channels not in (1, 3) \
                or unet.get("out_channels", channels) != channels:
            raise SynthgenError(f"{self.loc.uri}: a UNet2DModel of sample_size {size} with {channels} in / "
                                f"{unet.get('out_channels')} out channels; synthgen samples 1- or 3-channel "
                                "images of a known size")
        if unet.get("class_embed_type") not in (None,):
            raise SynthgenError(f"{self.loc.uri}: class_embed_type {unet['class_embed_type']!r} is not supported "
                                "(only num_class_embeds)")
        classes = int(unet.get("num_class_embeds") or 0)
        model_config = {"unet": unet, "scheduler": scheduler, "num_classes": classes}
        return CheckpointConfig(arch=ARCH, model_config=model_config, image_shape=[channels, height, width],
                                latent_dim=channels * height * width,
                                class_names=[str(k) for k in range(classes)],
                                training={"imported": "diffusers"})  # no path: the fingerprint names the model


    def load_state(self) -> tuple[bytes, dict]:
        """The weights' bytes and their tensors named as in synthgen's diffusion generator."""
        from synthgen.checkpoint import load_tensors

        data = self.weights()
        tensors = load_tensors(data, self.weights_path)
        return data, {f"denoiser.unet.{k}": v for k, v in tensors.items()}


def find(loc: storage.Location) -> DiffusersFolder | None:
    """The diffusers UNet in ``loc``, None when ``loc`` is not a diffusers folder (a synthgen checkpoint, or
    nothing), or a one-line refusal for one synthgen cannot read safely."""
    try:
        pipeline = storage.exists(loc, loc.join(PIPELINE_INDEX))
    except OSError:  # unreadable (refused credentials, ...): the checkpoint reader says so in one line
        return None
    if pipeline:
        unet_dir, scheduler = loc.join("unet"), loc.join("scheduler", SCHEDULER_CONFIG)
    elif _diffusers_config(loc, loc.join(UNET_CONFIG)) is not None:
        unet_dir, scheduler = loc.root, loc.join(SCHEDULER_CONFIG)
        sibling = loc.join("..", "scheduler", SCHEDULER_CONFIG)
        if not storage.exists(loc, scheduler) and storage.exists(loc, sibling):
            scheduler = sibling
    else:
        return None
    unet_config = f"{unet_dir}/{UNET_CONFIG}"
    if not storage.exists(loc, unet_config):
        raise SynthgenError(f"{loc.uri}: a diffusers pipeline folder without unet/{UNET_CONFIG}")
    if (_diffusers_config(loc, unet_config) or {}).get("_class_name") != "UNet2DModel":
        raise SynthgenError(f"{unet_config}: not a UNet2DModel (synthgen samples unconditional or class-"
                            "conditional UNet2DModel pixel-space models)")
    if not storage.exists(loc, f"{unet_dir}/{UNET_WEIGHTS}"):
        pickled = [name for name in PICKLED if storage.exists(loc, f"{unet_dir}/{name}")]
        what = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise SynthgenError(f"{unet_dir}: has {what}; synthgen reads {UNET_WEIGHTS} only (a pickle can run "
                            "code when loaded: convert it with save_pretrained(..., safe_serialization=True))")
    if not storage.exists(loc, scheduler):
        raise SynthgenError(f"{loc.uri}: no {SCHEDULER_CONFIG} beside the UNet (or in scheduler/); synthgen needs "
                            "the noise schedule the model was trained with")
    return DiffusersFolder(loc, unet_dir, scheduler)


def _diffusers_config(loc: storage.Location, path: str) -> dict | None:
    """The JSON at ``path`` when it is a diffusers config (it names its class or diffusers version)."""
    if not storage.exists(loc, path):
        return None
    try:
        raw = json.loads(storage.read_bytes(loc, path))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a broken synthgen config.json is refused, naming the file, by the checkpoint module
    if not isinstance(raw, dict) or "format" in raw:
        return None
    return raw if "_class_name" in raw or "_diffusers_version" in raw else None


def _json(loc: storage.Location, path: str) -> dict:
    try:
        raw = json.loads(storage.read_bytes(loc, path))
    except FileNotFoundError:
        raise SynthgenError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SynthgenError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise SynthgenError(f"{path}: not a JSON object")
    return raw
