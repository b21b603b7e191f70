"""The only module that reads or writes weights: safetensors tensors + a JSON config, never pickle.

A checkpoint is a directory (local or a URI) holding

- ``config.json``: format version, architecture and its config, image shape, latent size, class names,
  the pixels the model learned (bit depth and intensity mapping; absent = 8-bit, as before synthgen 0.7),
  training provenance (data file, its sha256, epochs, ...), synthgen version;
- ``model.safetensors``: the generator's weights;
- optionally ``training_state.safetensors`` + ``training_state.json``: what ``synthgen train --resume`` needs.

The model is always rebuilt from ``config.json``, never from CLI flags. Loading never unpickles: a checkpoint
is untrusted input, and a pickle, a truncated file or weights that do not fit the config are refused with a
message that names the file.

torch is imported only where weights become a model (or a model becomes weights): :func:`inspect_checkpoint`
validates and fingerprints a checkpoint without it, so the ``synthgen run`` driver never loads torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import safetensors
from safetensors import SafetensorError

from synthgen import __version__, diffusers_import, storage
from synthgen.errors import SynthgenError

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "synthgen-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"
STATE_META_FILE = "training_state.json"
DEFAULT_MODEL = "breastmnist-dcgan"
# How the generator's output x in [-1, 1] becomes a pixel of 2**bits levels (sampling.to_pixels_tensor), and
# how training maps pixels into [-1, 1] (its inverse, without rounding).
INTENSITY_MAPPING = "pixel = round((clamp(x, -1, 1) + 1) / 2 * (2**bit_depth - 1))"


def pixel_format(bit_depth: int) -> dict[str, Any]:
    """What a checkpoint records about its pixels."""
    return {"bit_depth": bit_depth, "dtype": "uint8" if bit_depth == 8 else "uint16", "mapping": INTENSITY_MAPPING}


# The training data's license and citation for a checkpoint whose config.json does not declare them (trained
# before --data-license, or the bundled model, whose config.json cannot change without changing its
# fingerprint and stranding its datasets): beside config.json, outside the fingerprint.
DATA_TERMS_FILE = "data_terms.json"
UNKNOWN = "unknown"


@dataclass
class CheckpointConfig:
    """Everything needed to rebuild and describe a generator; serialised as ``config.json``."""

    arch: str
    model_config: dict[str, Any]
    image_shape: list[int]  # [C, H, W]
    latent_dim: int
    class_names: list[str] = field(default_factory=list)  # empty = unconditional
    training: dict[str, Any] = field(default_factory=dict)  # data, data_sha256, epochs, seed, ...
    # bit depth, dtype and intensity mapping (pixel_format); None in checkpoints before 0.7: 8-bit. Left out of
    # config.json when None, so an old checkpoint's fingerprint (a hash of that JSON) does not change.
    pixels: dict[str, Any] | None = None
    synthgen_version: str = __version__
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def conditional(self) -> bool:
        return bool(self.class_names)

    @property
    def bit_depth(self) -> int:
        """8 or 16: the depth of the pixels the model learned and makes."""
        return int((self.pixels or {}).get("bit_depth", 8))

    def to_json(self) -> str:
        body = asdict(self)
        if body["pixels"] is None:
            del body["pixels"]
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> CheckpointConfig:
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SynthgenError(f"{source}: not valid JSON ({err})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise SynthgenError(f"{source}: not a synthgen checkpoint config (no \"format\": \"{FORMAT}\")")
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise SynthgenError(f"{source}: checkpoint format {raw['format_version']} is newer than this "
                                f"synthgen understands ({FORMAT_VERSION}); upgrade synthgen")
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        try:
            config = cls(**known)
        except TypeError as err:
            raise SynthgenError(f"{source}: incomplete checkpoint config ({err})") from None
        config._check(source)
        return config

    def _check(self, source: str) -> None:
        shape_ok = (isinstance(self.image_shape, list) and len(self.image_shape) == 3
                    and all(isinstance(d, int) and d > 0 for d in self.image_shape))
        if not shape_ok or self.image_shape[0] not in (1, 3):
            raise SynthgenError(f"{source}: image_shape must be [C, H, W] with C in (1, 3), "
                                f"got {self.image_shape}")
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise SynthgenError(f"{source}: latent_dim must be a positive integer")
        if not all(isinstance(n, str) and n for n in self.class_names) or \
                len(set(self.class_names)) != len(self.class_names):
            raise SynthgenError(f"{source}: class_names must be distinct non-empty strings")
        if self.pixels is not None and self.pixels not in (pixel_format(8), pixel_format(16)):
            raise SynthgenError(f"{source}: pixels must be {pixel_format(8)} or the 16-bit form, got {self.pixels}")
        if self.bit_depth == 16 and self.image_shape[0] != 1:
            raise SynthgenError(f"{source}: a 16-bit model must make single-channel (grayscale) images")


@dataclass
class Checkpoint:
    """A loaded generator in eval mode, its config and its fingerprint."""

    model: "nn.Module"
    config: CheckpointConfig
    fingerprint: str  # sha256 of config + weights; datasets carry it
    source: str


def bundled_root():
    return resources.files("synthgen") / "bundled"


def bundled_models() -> list[str]:
    """Names of the models shipped inside the package."""
    root = bundled_root()
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file())


def resolve(model: str | None) -> str:
    """A bundled model's name (or None for the default) -> its directory; anything else is a path or URI."""
    name = model or DEFAULT_MODEL
    if name in bundled_models():
        return str(bundled_root() / name)
    if model is None:
        raise SynthgenError(f"the default bundled model {DEFAULT_MODEL!r} is missing from this installation")
    return name


def fingerprint(config: CheckpointConfig, weights: bytes, source: str = "weights") -> str:
    """sha256 over the canonical config JSON and every tensor's name, dtype, shape and bytes, in name order.

    Computed from the safetensors bytes (no torch), so it names the weights whatever framework reads them.
    """
    h = hashlib.sha256(config.to_json().encode())
    for name, tensor in sorted(_parse_safetensors(weights, source)):
        h.update(f"{name}|{tensor['dtype']}|{list(tensor['shape'])}|".encode())
        h.update(tensor["data"])
    return h.hexdigest()


def save_checkpoint(out_dir: str, model: "nn.Module", config: CheckpointConfig) -> str:
    """Write ``model``'s weights and ``config`` to ``out_dir`` (each file atomically).

    Returns:
        The checkpoint's fingerprint.
    """
    from safetensors.torch import save as st_save

    loc = storage.locate(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = st_save(state, metadata={"format": FORMAT})
    storage.write_bytes_atomic(loc, loc.join(WEIGHTS_FILE), weights)
    storage.write_bytes_atomic(loc, loc.join(CONFIG_FILE), config.to_json().encode())
    return fingerprint(config, weights)


def inspect_checkpoint(model: str | None = None) -> tuple[CheckpointConfig, str]:
    """Validate a checkpoint's config and weights file and fingerprint it, without torch.

    Returns:
        The config and the fingerprint (the same one :func:`load_checkpoint` reports).
    """
    loc = storage.locate(resolve(model))
    config = read_config(model)
    if (imported := diffusers_import.find(loc)) is not None:  # a diffusers folder: its own file names
        return config, fingerprint(config, imported.weights(), imported.weights_path)
    return config, fingerprint(config, _read(loc, WEIGHTS_FILE), loc.join(WEIGHTS_FILE))


def read_config(model: str | None) -> CheckpointConfig:
    """Read and validate only ``config.json`` of a checkpoint (no weights, no torch work)."""
    loc = storage.locate(resolve(model))
    if (imported := diffusers_import.find(loc)) is not None:
        return imported.config()
    return CheckpointConfig.from_json(_read(loc, CONFIG_FILE).decode("utf-8", "replace"), loc.join(CONFIG_FILE))


def data_terms(model: str | None, config: CheckpointConfig) -> dict[str, str]:
    """The license and citation of the data ``model`` was trained on, and where they were declared.

    Returns:
        ``{"license", "citation", "declared_in"}``: each from ``config.training`` (``synthgen train
        --data-license / --data-citation``), else from ``data_terms.json`` beside the checkpoint, else
        "unknown" (``declared_in`` "config.json", "data_terms.json", both joined by " + ", or "nowhere").
    """
    training = config.training or {}
    given = {"license": training.get("data_license"), "citation": training.get("data_citation")}
    beside = _terms_file(model) if not all(given.values()) else {}
    terms, sources = {}, []
    for key, value in given.items():
        source = CONFIG_FILE if value else DATA_TERMS_FILE if beside.get(key) else None
        terms[key] = str(value or beside.get(key) or UNKNOWN)
        sources += [source] if source and source not in sources else []
    return {**terms, "declared_in": " + ".join(sources) or "nowhere"}


def _terms_file(model: str | None) -> dict:
    loc = storage.locate(resolve(model))
    path = loc.join(DATA_TERMS_FILE)
    try:
        raw = json.loads(storage.read_bytes(loc, path)) if storage.exists(loc, path) else None
    except (OSError, ValueError) as err:
        raise SynthgenError(f"{path}: not readable JSON ({err})") from None
    return raw if isinstance(raw, dict) else {}


def load_checkpoint(model: str | None = None, device: str = "cpu", allow_import: bool = False) -> Checkpoint:
    """Rebuild a generator from a checkpoint directory, a URI or a bundled model's name.

    Args:
        model: path, URI or bundled name; ``None`` = the default bundled model.
        device: torch device for the returned model.
        allow_import: permit architectures given as ``package.module:factory`` (runs their code).

    Returns:
        The generator in eval mode on ``device``, its config and fingerprint.
    """
    from synthgen.models import build_generator

    loc = storage.locate(resolve(model))
    config = read_config(model)
    weights_path = loc.join(WEIGHTS_FILE)
    if (imported := diffusers_import.find(loc)) is not None:
        weights_path = imported.weights_path
        weights, state = imported.load_state()
    else:
        weights = _read(loc, WEIGHTS_FILE)
        state = load_tensors(weights, weights_path)
    try:
        net = build_generator(config.arch, config.model_config, allow_import=allow_import)
    except ValueError as err:
        raise SynthgenError(f"{loc.join(CONFIG_FILE)}: {err}") from None
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0:2]
        raise SynthgenError(f"{weights_path}: weights do not match config.json ({' '.join(first)})") from None
    net.eval().to(device)
    _check_output_shape(net, config, weights_path)
    return Checkpoint(net, config, fingerprint(config, weights, weights_path), loc.uri)


def _refuse_pickle(data: bytes, source: str) -> None:
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise SynthgenError(f"{source}: is a pickle/torch.save file, not safetensors; "
                            "refusing to load it (unpickling can run arbitrary code)")


def _parse_safetensors(data: bytes, source: str) -> list[tuple[str, dict]]:
    _refuse_pickle(data, source)
    try:
        return safetensors.deserialize(data)
    except (SafetensorError, ValueError) as err:
        raise SynthgenError(f"{source}: not a valid safetensors file (corrupt or truncated: {err})") from None


def load_tensors(data: bytes, source: str) -> dict[str, "torch.Tensor"]:
    """Parse safetensors bytes; anything else (a pickle, a zip, a truncated file) is refused, never executed."""
    from safetensors.torch import load as st_load

    _refuse_pickle(data, source)
    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise SynthgenError(f"{source}: not a valid safetensors file (corrupt or truncated: {err})") from None


def save_training_state(out_dir: str, tensors: dict[str, "torch.Tensor"], meta: dict[str, Any]) -> None:
    """Write what resuming training needs (discriminator/encoder, optimisers) next to the checkpoint."""
    from safetensors.torch import save as st_save

    loc = storage.locate(out_dir)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    storage.write_bytes_atomic(loc, loc.join(STATE_FILE), st_save(tensors))
    storage.write_bytes_atomic(loc, loc.join(STATE_META_FILE), json.dumps(meta, indent=2).encode())


def load_training_state(out_dir: str) -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    loc = storage.locate(out_dir)
    tensors = load_tensors(_read(loc, STATE_FILE), loc.join(STATE_FILE))
    meta_path = loc.join(STATE_META_FILE)
    try:
        meta = json.loads(_read(loc, STATE_META_FILE))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SynthgenError(f"{meta_path}: not valid JSON ({err})") from None
    return tensors, meta


def _read(loc: storage.Location, name: str) -> bytes:
    path = loc.join(name)
    try:
        return storage.read_bytes(loc, path)
    except FileNotFoundError:
        what = "checkpoint directory" if not storage.exists(loc, loc.root) else "file"
        missing = loc.uri if what == "checkpoint directory" else path
        raise SynthgenError(f"{missing}: no such {what} (expected {CONFIG_FILE} and {WEIGHTS_FILE})") from None
    except OSError as err:
        if isinstance(err, NotADirectoryError):  # a local file where the checkpoint directory belongs
            raise SynthgenError(f"{loc.uri}: is a file; a model is a checkpoint directory ({CONFIG_FILE} and "
                                f"{WEIGHTS_FILE}) or a bundled model's name") from None
        raise SynthgenError(f"{path}: cannot read ({err})") from None


def _check_output_shape(net: "nn.Module", config: CheckpointConfig, source: str) -> None:
    import torch

    device = next(net.parameters()).device
    z = torch.zeros(2, config.latent_dim, device=device)
    labels = torch.zeros(2, dtype=torch.long, device=device) if config.conditional else None
    with torch.no_grad():
        try:  # a diffusion sampler probes with one network pass instead of a whole sampling loop
            out = getattr(net, "shape_probe", net)(z, labels)
        except (RuntimeError, ValueError, IndexError) as err:
            raise SynthgenError(f"{source}: model cannot run on its own config ({err})") from None
    if list(out.shape[1:]) != list(config.image_shape):
        raise SynthgenError(f"{source}: model makes images of shape {list(out.shape[1:])}, "
                            f"config.json says {config.image_shape}")
