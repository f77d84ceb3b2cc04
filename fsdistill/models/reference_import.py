"""Import an official DCAMA / DistillFSS teacher checkpoint ("modcross") into a :class:`DCAMATeacher`.

Written from the key layout in reference.md §4 (no reference code is used). Head tensors (``DCAMA_blocks``,
``conv1``–``conv5``, ``mixer1``–``mixer3``) map by name onto ``blocks`` and ``decoder``, ``feature_extractor.*``
onto ``backbone.model`` (timm names); the stored ``pe`` is only checked against ours. Names may be wrapped in
``module.``/``model.``/``teacher.``. When names do not match, tensors are paired by position with a strict shape
check. A head that fits neither way raises :class:`CheckpointError`; such a backbone is kept, with a warning.
After import the teacher behaves as published (``prior_scale`` 0, ``qk_norm`` None): build it from
:func:`published_model_cfg`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from fsdistill.config import ModelCfg
from fsdistill.errors import CheckpointError, ConfigError
from fsdistill.models.backbone_specs import BACKBONE_NAMES, backbone_spec
from fsdistill.models.decoder import DCAMADecoder
from fsdistill.models.state_dict import COUNTER, positional_orders, read_state_dict
from fsdistill.models.teacher import ATTENTION_LEVELS, DCAMATeacher, sinusoidal_pe

__all__ = ["ImportReport", "import_reference_weights", "published_model_cfg", "BLOCK_STAGES"]

log = logging.getLogger(__name__)

# Reference DCAMA_blocks index → (paper stage, our backbone level); our ``blocks[i]`` serves the same stage.
BLOCK_STAGES: dict[int, tuple[int, int]] = {0: (2, 1), 1: (3, 2), 2: (4, 3)}
assert tuple(level for _, level in BLOCK_STAGES.values()) == ATTENTION_LEVELS

# Leading tokens that only wrap the model: DDP, the "LA repo" export, a DistillFSS model's teacher, torch.compile.
_WRAPPERS = frozenset({"module", "model", "teacher", "_orig_mod"})
_BACKBONE_ROOT = "feature_extractor"
_DECODER_MODULES = ("conv1", "conv2", "conv3", "conv4", "conv5", "mixer1", "mixer2", "mixer3")
_HEAD_MODULES = frozenset({"DCAMA_blocks", "pe", *_DECODER_MODULES})
# Backbone tensors that are never paired: buffers rebuilt by timm, and batch counters (kept from the model).
_SKIPPED_BUFFERS = ("relative_position_index", "attn_mask", COUNTER)
# The reference decoder (reference.md §1.3): ConvMapper/ConvMerge width and mixer widths.
_REFERENCE_WIDTH = 128
_REFERENCE_MIXER = (128, 64, 16)
_REFERENCE_HEADS = 8
# Published DCAMA backbones fsdistill does not build (attention widths of stages 2–4, maps per stage 2–4).
_UNSUPPORTED_BACKBONES: tuple[tuple[str, tuple[int, int, int], tuple[int, int, int] | None], ...] = (
    ("resnet101 (not supported by fsdistill)", (512, 1024, 2048), (4, 23, 3)),
    ("dinov3-small (not supported by fsdistill)", (384, 384, 384), None),
    ("dinov3-base (not supported by fsdistill)", (768, 768, 768), None),
    ("dinov3-large (not supported by fsdistill)", (1024, 1024, 1024), None),
)


@dataclass
class ImportReport:
    """What :func:`import_reference_weights` loaded.

    Attributes:
        head_method, backbone_method: ``"name"`` or ``"positional"``; the backbone also ``"kept"`` (the file's did
            not fit or was absent: the teacher keeps its own, and ``backbone_note`` says why).
        ignored_keys: file keys not used (stored PE, classifier, final norm, Swin buffers, unknown tensors).
        pe_checked: stored PE buffers that matched fsdistill's regenerated encoding.
    """

    path: Path
    head_method: str
    head_tensors: int
    backbone_method: str
    backbone_tensors: int
    backbone_note: str = ""
    ignored_keys: list[str] = field(default_factory=list)
    pe_checked: int = 0

    @property
    def backbone_kept(self) -> bool:
        return self.backbone_method == "kept"

    def summary(self) -> str:
        """One line for logs."""
        if self.backbone_kept:
            backbone = f"backbone kept ({self.backbone_note})"
        else:
            backbone = f"{self.backbone_tensors} backbone tensors by {self.backbone_method}"
        return (
            f"imported {self.path.name}: {self.head_tensors} head tensors by {self.head_method}, {backbone}, "
            f"{len(self.ignored_keys)} keys ignored"
        )


def _unwrapped(key: str) -> list[str]:
    """The parts of ``key`` after its leading wrapper tokens (the last part always stays)."""
    parts = key.split(".")
    i = 0
    while i < len(parts) - 1 and parts[i] in _WRAPPERS:
        i += 1
    return parts[i:]


def _split(key: str) -> tuple[str, str] | None:
    """``("backbone", name in the backbone)``, ``("head", "convK.n.weight"…)`` or None for an unknown key."""
    parts = _unwrapped(key)
    if parts[0] == _BACKBONE_ROOT and len(parts) > 1:
        return "backbone", ".".join(parts[1:])
    if parts[0] in _HEAD_MODULES and len(parts) > 2 and parts[1].isdigit():
        return "head", ".".join(parts)
    return None


def _head_targets(teacher: DCAMATeacher) -> list[tuple[str, str]]:
    """(reference name without wrappers, our parameter name) of every head tensor, in the reference's order."""
    pairs = [(f"DCAMA_{name}", name) for name, _ in teacher.blocks.named_parameters(prefix="blocks")]
    for module in _DECODER_MODULES:
        params = getattr(teacher.decoder, module).named_parameters(prefix=module)
        pairs += [(name, f"decoder.{name}") for name, _ in params]
    return pairs


def _is_pe(key: str, tensor: Tensor) -> bool:
    """A stored positional encoding: ``pe`` leaf, or a 1×L×C tensor (no head parameter is 3-D)."""
    return key.rsplit(".", 1)[-1] == "pe" or (tensor.ndim == 3 and tensor.shape[0] == 1)


def _backbone_guess(widths: tuple[int, ...], maps: tuple[int, ...] | None) -> str | None:
    """Name of the backbone whose stage 2–4 attention widths (and maps per stage) these are, if known."""
    specs = [backbone_spec(name) for name in BACKBONE_NAMES]
    candidates = [(s.name, tuple(s.channels[1:]), tuple(s.num_blocks[1:])) for s in specs] + [*_UNSUPPORTED_BACKBONES]
    by_width = [c for c in candidates if c[1] == widths]
    exact = [c for c in by_width if maps is None or c[2] is None or c[2] == maps]
    chosen = exact or by_width
    return chosen[0][0] if chosen else None


def _fmt(values: tuple[int, ...]) -> str:
    return "/".join(str(v) for v in values)


def _diagnose(
    teacher: DCAMATeacher, path: Path, got: dict[str, tuple[str, torch.Size]], positional: bool = False
) -> CheckpointError:
    """The most useful error for a head that does not fit (``got``: our parameter name → (file key, file shape),
    paired by name, or by ``positional`` pairing of the file's last tensors): other backbone, support
    concatenation, or the first key."""
    spec = teacher.backbone.spec
    params = dict(teacher.named_parameters())
    ours_w = tuple(spec.channels[lvl] for lvl in ATTENTION_LEVELS)
    ours_m = tuple(spec.num_blocks[lvl] for lvl in ATTENTION_LEVELS)
    linears = [got.get(f"blocks.{i}.linears.0.weight") for i in range(3)]
    if all(x is not None and len(x[1]) == 2 and x[1][0] == x[1][1] for x in linears):
        widths = tuple(int(x[1][0]) for x in linears)  # type: ignore[index]
        mapper = [got.get(f"decoder.conv{k}.0.weight") for k in (3, 2, 1)]  # stage 2, 3, 4
        maps = tuple(int(x[1][1]) for x in mapper) if all(x is not None and len(x[1]) == 4 for x in mapper) else None
        if widths != ours_w or (maps is not None and maps != ours_m):
            guess = _backbone_guess(widths, maps)
            found = f"attention widths {_fmt(widths)}" + (f", {_fmt(maps)} maps at stages 2–4" if maps else "")
            needs = f"the {guess} backbone" if guess else "an unknown backbone"
            supported = guess in BACKBONE_NAMES
            fix = f"pass --backbone {guess}" if supported else f"use a checkpoint trained with {spec.name}"
            return CheckpointError(
                f"Teacher checkpoint {path} needs {needs} ({found}) but this teacher uses {spec.name} "
                f"({_fmt(ours_w)}, {_fmt(ours_m)} maps); {fix}."
            )
    elif positional:
        key, shape = linears[0] or ("?", torch.Size())
        return CheckpointError(
            f"Teacher checkpoint {path} holds no DCAMA head: it has no model.DCAMA_blocks / model.conv* names and "
            f"its tensors do not fit by position ({key} of shape {tuple(shape)} where an attention projection is "
            "expected); pass an official DCAMA/DistillFSS checkpoint, not a backbone file."
        )
    for ours, (key, shape) in got.items():
        want = tuple(params[ours].shape)
        if tuple(shape) == want:
            continue
        if ours == "decoder.mixer1.0.weight" and len(shape) == 4:
            width = teacher.decoder.width
            concat = width + 2 * (spec.channels[0] + spec.channels[1])
            if shape[1] == concat:
                return CheckpointError(
                    f"Teacher checkpoint {path} has {key} of shape {tuple(shape)} where fsdistill needs {want}: it "
                    "was trained with support concatenation (concat_support=True, the original DCAMA), which "
                    'fsdistill does not support; use a "modcross" checkpoint trained with --remove_support_skip.'
                )
        return CheckpointError(
            f"Teacher checkpoint {path} does not fit this teacher: {key} has shape {tuple(shape)} where "
            f'{ours} needs {want}; pass an official DCAMA/DistillFSS "modcross" checkpoint for {spec.name}.'
        )
    return CheckpointError(
        f"Teacher checkpoint {path} does not fit this teacher; pass an official DCAMA/DistillFSS checkpoint."
    )


def _resolve_head(
    teacher: DCAMATeacher, path: Path, state: dict[str, Tensor], head_keys: dict[str, str], candidates: list[str]
) -> tuple[str, dict[str, str], list[str]]:
    """Pair our head parameters with file keys, by name or else by position (raises CheckpointError otherwise).

    Args:
        head_keys: reference name (wrappers stripped) → file key, for keys that parse as head keys (no PE).
        candidates: file keys that may be head tensors for positional pairing (stored order, no backbone/PE).
    Returns:
        (method, our name → file key, candidate keys in front of a positional head: the file's backbone, if unnamed).
    """
    targets = _head_targets(teacher)
    params = dict(teacher.named_parameters())
    n = len(targets)
    if all(ref in head_keys for ref, _ in targets):
        got = {ours: (head_keys[ref], state[head_keys[ref]].shape) for ref, ours in targets}
        if all(tuple(shape) == tuple(params[ours].shape) for ours, (_, shape) in got.items()):
            return "name", {ours: key for ours, (key, _) in got.items()}, []
        raise _diagnose(teacher, path, got)
    first_failure: dict[str, tuple[str, torch.Size]] | None = None
    for order in positional_orders(candidates, path):
        if len(order) < n:
            break
        got = {ours: (key, state[key].shape) for (_, ours), key in zip(targets, order[-n:])}
        if all(tuple(shape) == tuple(params[ours].shape) for ours, (_, shape) in got.items()):
            log.info(
                "Teacher checkpoint %s: head names differ from the reference; paired %d tensors by position.", path, n
            )
            return "positional", {ours: key for ours, (key, _) in got.items()}, order[:-n]
        first_failure = first_failure or got
    if head_keys:
        missing = [f"model.{ref}" for ref, _ in targets if ref not in head_keys]
        shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        raise CheckpointError(
            f"Teacher checkpoint {path} lacks {len(missing)} of the {n} DCAMA head tensors ({shown}); pass a "
            "complete official DCAMA/DistillFSS checkpoint."
        )
    if first_failure is not None:
        raise _diagnose(teacher, path, first_failure, positional=True)
    raise CheckpointError(
        f"Teacher checkpoint {path} holds no DCAMA head (no model.DCAMA_blocks / model.conv* / model.mixer* "
        f"tensors, and only {len(candidates)} unnamed tensors where {n} are needed); pass an official "
        "DCAMA/DistillFSS checkpoint, not a backbone file."
    )


def _check_pe(teacher: DCAMATeacher, path: Path, pe: dict[int, Tensor]) -> int:
    """Compare stored PE buffers with fsdistill's regenerated encoding; warn on a mismatch. Returns matches."""
    matched = 0
    for i, stored in sorted(pe.items()):
        if i >= len(teacher.blocks) or stored.ndim != 3 or stored.shape[-1] != teacher.blocks[i].channels:
            continue
        length = min(stored.shape[1], 1024)  # enough positions to tell two encodings apart
        ours = sinusoidal_pe(length, stored.shape[-1], torch.device("cpu"), torch.float32)
        diff = (stored[0, :length].float() - ours).abs().max().item()
        if diff <= 1e-3:
            matched += 1
        else:
            log.warning(
                "Teacher checkpoint %s: the stored positional encoding of DCAMA block %d differs from fsdistill's "
                "regenerated one (max difference %.3g); the imported teacher may not reproduce published results.",
                path,
                i,
                diff,
            )
    return matched


def _rename_backbone(family: str, names: list[str]) -> dict[str, str]:
    """Reference backbone name → timm name (identity except the original Swin's downsample placement)."""
    if family == "swin" and any(n.startswith("layers.0.downsample.") for n in names):
        # Original Swin merges patches at the END of stage i; timm at the START of stage i+1.
        pattern = re.compile(r"^layers\.(\d+)\.downsample\.")
        return {n: pattern.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", n) for n in names}
    return {n: n for n in names}


def _resolve_backbone(
    teacher: DCAMATeacher, path: Path, source: dict[str, Tensor]
) -> tuple[str, dict[str, Tensor] | None, str, list[str]]:
    """Map the file's backbone tensors (names relative to the backbone, stored order) onto ``backbone.model``:
    (method, full state dict to load or None when kept, note, source names not used)."""
    model = teacher.backbone.model
    spec = teacher.backbone.spec
    target = model.state_dict()
    wanted = [k for k in target if not k.endswith(COUNTER)]
    if not source:
        return "kept", None, "the checkpoint holds no backbone weights", []
    # 1. By name, after the family's renames.
    renamed = _rename_backbone(spec.family, list(source))
    by_name = {new: old for old, new in renamed.items()}
    missing = [k for k in wanted if k not in by_name]
    if not missing:
        bad = [k for k in wanted if source[by_name[k]].shape != target[k].shape]
        if not bad:
            mapped = {k: source[by_name[k]] if k in by_name else v for k, v in target.items()}
            used = {by_name[k] for k in target if k in by_name}
            return "name", mapped, "", [n for n in source if n not in used]
        k = bad[0]
        reason = f"{by_name[k]} has shape {tuple(source[by_name[k]].shape)} where {k} needs {tuple(target[k].shape)}"
    else:
        reason = f"{len(missing)} of {len(wanted)} tensors not found by name, e.g. {missing[0]}"
    # 2. By position, strict shapes; extra tensors may only trail (classifier, final norm).
    paired = [n for n in source if not n.endswith(_SKIPPED_BUFFERS) and source[n].is_floating_point()]
    for order in positional_orders(paired, path):
        if len(order) < len(wanted):
            reason += f"; by position {len(order)} tensors where {len(wanted)} are needed"
            break
        if all(source[s].shape == target[d].shape for s, d in zip(order, wanted)):
            mapped = dict(target)
            mapped.update({d: source[s] for s, d in zip(order, wanted)})
            used = set(order[: len(wanted)])
            return "positional", mapped, "", [n for n in source if n not in used]
    else:
        reason += "; tensors do not fit by position either"
    return "kept", None, f"its backbone weights do not fit {spec.name}: {reason}", list(source)


def published_model_cfg(cfg: ModelCfg) -> ModelCfg:
    """``cfg`` as an imported teacher runs: raw scaled dot-product attention (``qk_norm`` None), as published."""
    return cfg.model_copy(update={"qk_norm": None})


def _warn_other_attention(teacher: DCAMATeacher, path: Path, pe: dict[int, Tensor]) -> None:
    """Say so when the teacher's attention is set up otherwise than the checkpoint was trained: another number of
    heads (the query/key split changes), or no positional encoding where the file stores one. Its weights still fit,
    so it is the user's choice; but the teacher is no longer the published one."""
    heads = teacher.blocks[0].heads
    if heads != _REFERENCE_HEADS:
        log.warning(
            "Teacher checkpoint %s was trained with %d attention heads but this teacher uses %d; results will differ "
            "from the published model.",
            path, _REFERENCE_HEADS, heads,
        )  # fmt: skip
    if pe and not teacher.blocks[0].use_pe:
        log.warning(
            "Teacher checkpoint %s was trained with positional encoding (it stores model.pe) but this teacher has "
            "use_pe: false; results will differ from the published model.",
            path,
        )


def import_reference_weights(teacher: DCAMATeacher, path: Path | str) -> ImportReport:
    """Load an official DCAMA / DistillFSS "modcross" checkpoint into ``teacher`` (in place).

    Args:
        teacher: built on the backbone the checkpoint was trained with (swin-b or resnet50), paper decoder widths.
        path: ``.pt``/``.pth`` (read with ``weights_only=True``) or ``.safetensors``.

    Raises:
        CheckpointError: unreadable file, no DCAMA head, a head for another backbone, a head trained with support
            concatenation, or any tensor whose shape does not fit. Nothing is changed when it raises.
        ConfigError: the teacher was built with non-paper decoder widths.
    """
    path = Path(path).expanduser()
    decoder = teacher.decoder
    if not isinstance(decoder, DCAMADecoder):
        raise ConfigError("--teacher-weights needs the paper's decoder; pass --decoder dcama (or leave --decoder out).")
    mixer = decoder.mixer_widths
    if decoder.width != _REFERENCE_WIDTH or mixer != _REFERENCE_MIXER:
        raise ConfigError(
            f"--teacher-weights needs the paper decoder (decoder_width {_REFERENCE_WIDTH}, mixer_widths "
            f"{_REFERENCE_MIXER}) but this teacher has {decoder.width} and {mixer}; drop those options."
        )
    state = read_state_dict(
        path,
        "Teacher weights",
        "--teacher-weights",
        "pass an official DCAMA/DistillFSS .pt/.pth/.safetensors checkpoint saved as a plain state dict",
    )

    head_keys: dict[str, str] = {}
    backbone_src: dict[str, Tensor] = {}
    pe: dict[int, Tensor] = {}
    ignored: list[str] = []
    candidates: list[str] = []
    key_of: dict[str, str] = {}  # backbone name → file key
    for key, tensor in state.items():
        parsed = _split(key)
        if parsed is not None and parsed[0] == "backbone":
            if parsed[1] in backbone_src:  # the same tensor under two wrappings: the first one wins
                ignored.append(key)
            backbone_src.setdefault(parsed[1], tensor)
            key_of.setdefault(parsed[1], key)
            continue
        if _is_pe(key, tensor):
            if parsed is not None and parsed[1].startswith("pe."):
                pe[int(parsed[1].split(".")[1])] = tensor
            ignored.append(key)
            continue
        if parsed is not None:
            head_keys.setdefault(parsed[1], key)
        if tensor.is_floating_point():
            candidates.append(key)
        else:
            ignored.append(key)

    method, head_map, leading = _resolve_head(teacher, path, state, head_keys, candidates)
    used = set(head_map.values())
    if not backbone_src and leading:
        # No feature_extractor names: the tensors before the positional head are the backbone (module order).
        for k in leading:
            name = ".".join(_unwrapped(k))
            backbone_src[name] = state[k]
            key_of.setdefault(name, k)
        used |= set(leading)
    ignored += [k for k in candidates if k not in used]

    bb_method, bb_state, bb_note, bb_unused = _resolve_backbone(teacher, path, backbone_src)
    ignored += [key_of.get(n, n) for n in bb_unused]
    documented = {key_of.get(n, n) for n in bb_unused}  # the backbone's classifier and final norm
    unplaced = [
        k
        for k in ignored
        if k not in documented and state[k].is_floating_point() and not _is_pe(k, state[k])
        and not any(part in k for part in _SKIPPED_BUFFERS)
    ]  # fmt: skip
    students = [k for k in unplaced if _unwrapped(k)[:1] == ["student"]]
    unplaced = [k for k in unplaced if k not in students]
    if students:
        log.warning(
            "Teacher checkpoint %s also holds a DistillFSS student (%d tensors, e.g. %s): only its teacher is "
            "imported; distill trains a student of its own.",
            path, len(students), students[0],
        )  # fmt: skip
    if unplaced and bb_state is None:
        # The teacher would run on another backbone than the checkpoint's: its backbone lies under a name this
        # importer does not know (not feature_extractor), or the file is another model's.
        raise CheckpointError(
            f"Teacher checkpoint {path} holds {len(unplaced)} tensors that fit no part of a DCAMA teacher (e.g. "
            f"{', '.join(unplaced[:2])}) and no backbone this importer finds (it looks under {_BACKBONE_ROOT}.); "
            "save the backbone under that name, or check that the file is a DCAMA checkpoint."
        )
    if unplaced:
        log.warning(
            "Teacher checkpoint %s: %d tensors are not used (e.g. %s); the published model may differ.",
            path, len(unplaced), ", ".join(unplaced[:3]),
        )  # fmt: skip

    # Nothing above changed the teacher; apply everything now.
    params = dict(teacher.named_parameters())
    with torch.no_grad():
        for ours, key in head_map.items():
            params[ours].copy_(state[key])
        decoder.prior_scale.fill_(0.0)
    for block in teacher.blocks:
        block.qk_norm = None
    loaded_bb = 0
    if bb_state is not None:
        teacher.backbone.model.load_state_dict(bb_state, strict=True)
        loaded_bb = len(backbone_src) - len(bb_unused)
        # Recorded in the artifacts: the backbone is the checkpoint's, whatever the teacher was built with.
        teacher.backbone.spec = replace(teacher.backbone.spec, source=f"backbone of the teacher checkpoint {path}")
    else:
        source = teacher.backbone.spec.source
        level: Callable[..., None] = log.warning if backbone_src or source == "random init" else log.info
        level("Teacher checkpoint %s: %s; keeping the current backbone (%s).", path, bb_note, source)

    pe_checked = _check_pe(teacher, path, pe)
    _warn_other_attention(teacher, path, pe)
    report = ImportReport(
        path=path,
        head_method=method,
        head_tensors=len(head_map),
        backbone_method=bb_method,
        backbone_tensors=loaded_bb,
        backbone_note=bb_note,
        ignored_keys=ignored,
        pe_checked=pe_checked,
    )
    log.info("%s", report.summary())
    return report
