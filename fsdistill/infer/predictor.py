"""Batched inference over files: decode in DataLoader workers, run the model, write masks at original size.

Used by ``predict`` (image folders) and ``evaluate`` (labelled folders). Masks are written one file at a time,
atomically, so an interrupted run leaves only complete masks and a rerun skips them (resume).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fsdistill.checkpoint import config_sha256
from fsdistill.data.discover import recorded_category_ids
from fsdistill.data.images import (
    IMAGE_SUFFIXES,
    OTHER_IMAGE_SUFFIXES,
    image_size,
    read_image,
    read_image_reduced,
    unread_images_note,
)
from fsdistill.data.layouts import mask_folders
from fsdistill.data.masks import encode_index_png
from fsdistill.data.transforms import resize_image, to_chw_tensor
from fsdistill.errors import ConfigError, DataError, FsdistillError
from fsdistill.infer.formats import (
    FormatOptions,
    add_missing_scores,
    check_class_names,
    check_file_names,
    png_bytes,
    remove_format_files,
    scores_text,
    write_formats,
)
from fsdistill.infer.postprocess import logits_to_mask
from fsdistill.infer.shard import CSV_HEADER, PREDICTIONS_CSV, Shard, merge_shard_tables
from fsdistill.models.build import LoadedModel, for_inference
from fsdistill.runtime import (
    inference_dtype,
    inference_memory_format,
    mixed_precision,
    raise_if_interrupted,
    retain_freed_memory,
)
from fsdistill.storage import Storage, StoredFile, open_storage

__all__ = ["list_images", "Runner", "Predictor", "PredictResult", "predict_files", "MANIFEST_NAME", "Source"]

MANIFEST_NAME = ".fsdistill-predict.json"

# An image to predict: a local file, or a file in an object store (see fsdistill.storage).
Source = Path | StoredFile

log = logging.getLogger(__name__)


def _is_output_folder(storage: Storage, folder: str, out: Storage | None) -> bool:
    """Whether ``folder`` (a key of ``storage``) holds predict outputs rather than input images: the ``-o``
    folder or its masks/ and overlays/, or a folder with a predict manifest (an earlier run's ``-o``) or those of
    one. Read back as input, ``predict q -o q/pred`` would double its images on every run."""
    if storage.is_file(f"{folder}/{MANIFEST_NAME}"):
        return True
    parent, _, name = folder.rpartition("/")
    if name in ("masks", "overlays") and storage.is_file(f"{parent}/{MANIFEST_NAME}" if parent else MANIFEST_NAME):
        return True
    if out is None:
        return False
    return storage.identity(folder) in {out.identity(), out.identity("masks"), out.identity("overlays")}


def _walk_images(storage: Storage, out: Storage | None) -> Iterator[str]:
    """Keys of the image files below ``storage``'s root, skipping hidden entries, predict output folders and the
    mask folders of labelled folders (masks/ beside images/: their files are masks, not images to segment). Images
    of a format it does not read (GIF, HEIC, ...) are named in one warning at the end."""
    unread: list[str] = []
    yield from _walk_readable(storage, out, unread)
    if unread:
        log.warning(unread_images_note(unread, storage.display()))


def _walk_readable(storage: Storage, out: Storage | None, unread: list[str]) -> Iterator[str]:
    for folder, dirs, files in storage.walk():
        here = f"{folder}/" if folder else ""
        masks = mask_folders(dirs)
        # Pruning ``dirs`` in place keeps the walk out of them (and out of their often large masks/ trees).
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and d not in masks and not _is_output_folder(storage, here + d, out)
        )
        for name in sorted(files):
            suffix = Path(name).suffix.lower()
            if not name.startswith(".") and suffix in IMAGE_SUFFIXES:
                yield here + name
            elif not name.startswith(".") and suffix in OTHER_IMAGE_SUFFIXES:
                unread.append(here + name)


def _write_manifest(out: Storage, identity: dict, unique: bool) -> None:
    """Write ``out``'s :data:`MANIFEST_NAME` (what model and backend made its masks); ``unique``: another process
    (a shard) may write it at the same time."""
    out.write_bytes(MANIFEST_NAME, (json.dumps(identity, indent=2) + "\n").encode("utf-8"), unique=unique)


def list_images(
    inputs: Sequence[Path | str], out_dir: Path | str | Storage | None = None, writes_masks: bool = True
) -> list[tuple[Source, Path]]:
    """Image files of ``inputs`` (files, or folders searched recursively; local paths or object-store URIs) as
    (source, output-relative path), skipping folders of predict outputs (``out_dir``, or one with a manifest).

    With several inputs, each one's outputs go under its own name. A file reached twice (``predict r r/sub``) is
    listed once, under the first input that reaches it. ``writes_masks``: refuse two images whose masks would
    share a path (``x.jpg`` and ``x.png``); off for the pools of ``suggest`` and ``distill --unlabeled``, which
    write none.
    """
    out = out_dir if isinstance(out_dir, Storage) or out_dir is None else open_storage(out_dir)
    unique_inputs: dict[str, tuple[Storage, str]] = {}  # by identity: an input given twice is read once
    for given in inputs:
        storage = open_storage(given)
        kind = storage.kind()
        if kind == "missing" and storage.local is not None and storage.local.exists():  # a pipe, a device
            raise DataError(f"Input {storage} is not a regular file (a pipe or a device); pass image files or folders.")
        if kind == "missing":
            raise DataError(f"Input {storage} does not exist; pass image files or folders.")
        unique_inputs.setdefault(storage.identity(), (storage, kind))
    # By identity: overlapping inputs reach one file twice, and predicting it twice would write two masks of it.
    unique: dict[str, tuple[Source, Path]] = {}
    for storage, kind in unique_inputs.values():
        name = PurePosixPath(storage.display().rstrip("/")).name
        if name in ("", ".", ".."):  # "predict .. b/": the folder's own name, never a step out of masks/
            name = PurePosixPath(storage.identity().rstrip("/")).name or "root"
        prefix = Path(name) if len(unique_inputs) > 1 else Path()
        if kind == "file":
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{storage} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            # A file's mask goes beside the others, not in a folder of its name.
            unique.setdefault(storage.identity(""), (storage.source(""), Path(name)))
            continue
        for key in sorted(_walk_images(storage, out), key=PurePosixPath):
            unique.setdefault(storage.identity(key), (storage.source(key), prefix / key))
    if not unique:
        raise DataError(
            f"No images found in {', '.join(map(str, inputs))}; supported: {', '.join(sorted(IMAGE_SUFFIXES))}."
        )
    if writes_masks:
        seen: dict[Path, Source] = {}
        for source, rel in unique.values():
            target = rel.with_suffix(".png")
            if target in seen:
                raise DataError(
                    f"{seen[target]} and {source} would both write masks/{target}; rename one or predict them into "
                    "separate -o folders."
                )
            seen[target] = source
    return list(unique.values())


class _ImageDataset(Dataset):
    """Decodes (JPEGs at a reduced scale, see read_image_reduced) and resizes images; a bad file becomes an error
    record, not a crash."""

    def __init__(self, paths: list[Source], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            image, (h, w) = read_image_reduced(self.paths[i], self.size)
        except FsdistillError as exc:
            return {"index": i, "error": str(exc)}
        small = to_chw_tensor(resize_image(image, self.size))
        return {"index": i, "image": small, "height": h, "width": w}


def image_batches(
    paths: list[Source], size: int, batch_size: int, workers: int
) -> Iterator[tuple[list[dict], list[tuple[int, str]]]]:
    """Decode ``paths`` ``batch_size`` at a time (``workers`` processes; none for a single batch), resized to
    size×size: per batch, the readable items (``index``, ``image`` 3×size×size uint8, ``height``, ``width``) and
    the ``(index, error)`` of each unreadable one. Only one batch of images is in memory at a time."""
    workers = workers if len(paths) > batch_size else 0
    loader = DataLoader(
        _ImageDataset(paths, size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,  # a batch stays a list of item dicts (an unreadable image is an error item)
    )
    # The workers resize with one OpenCV thread each (not fighting the model for the cores), inherited from this
    # process while they are forked: set in a worker, it deadlocked once this process had resized an image itself
    # (the child inherits the thread pool's lock state but not its threads).
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        batches = iter(loader)  # forks the workers
    finally:
        cv2.setNumThreads(previous)
    for items in batches:
        raise_if_interrupted()
        yield [it for it in items if "error" not in it], [(it["index"], it["error"]) for it in items if "error" in it]


class Runner(ABC):
    """An inference backend for :func:`predict_files`: subclasses set ``size`` (square input side),
    ``class_names``, ``palette`` and ``on_gpu`` and implement :meth:`logits` and :meth:`identity`; decoding,
    batching and upsampling are shared here, so every backend writes the same masks from the same logits."""

    size: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    # COCO category ids of classes 1..N when the model was trained on a COCO folder (its pre-labels keep them).
    category_ids: list[int] | None = None
    on_gpu: bool = False

    @abstractmethod
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×size×size uint8 → B×(N+1)×h×w float logits (h×w: the model's output grid, upsampled later)."""

    @abstractmethod
    def identity(self) -> dict:
        """What makes an output folder this model's (stored in the folder's manifest to guard resume)."""

    def outputs(
        self, paths: list[Source], batch_size: int = 8, workers: int = 2, scored: bool = False
    ) -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None, str | None]]:
        """``(index, mask, probs, error)`` per path, decoded ``batch_size`` at a time by ``workers`` processes: the
        H×W uint8 mask, or None with the error of an unreadable image; ``probs`` the K×h×w float32 softmax on the
        model's output grid when ``scored`` (for :mod:`fsdistill.infer.formats`), else None."""
        for good, failed in image_batches(paths, self.size, batch_size, workers):
            for index, error in failed:
                yield index, None, None, error
            if not good:
                continue
            logits = self.logits(torch.stack([it["image"] for it in good]))
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy() if scored else [None] * len(good)
            for it, lg, pr in zip(good, logits, probs):
                yield it["index"], logits_to_mask(lg, it["height"], it["width"]), pr, None


class Predictor(Runner):
    """Runs a loaded student (or teacher with its stored supports) with PyTorch on uint8 images, in bfloat16
    autocast on CUDA. Creating one makes the process keep the memory a batch frees for the next one
    (:func:`fsdistill.runtime.retain_freed_memory`)."""

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        retain_freed_memory()
        self.loaded = loaded.to(device)
        self.device = device
        self.dtype = inference_dtype(device)  # the forward's arithmetic
        self.on_gpu = device.type != "cpu"
        self.size = loaded.size
        self.class_names = loaded.class_names
        self.palette = loaded.palette
        self.channels_last = inference_memory_format(device, loaded.kind) == torch.channels_last
        for_inference(self.loaded.model, device, loaded.kind)

    @functools.cached_property
    def category_ids(self) -> list[int] | None:
        """COCO category ids of classes 1..N (a model trained on a COCO folder), else None; read when --format coco
        asks (an earlier artifact's may need its folder, see :func:`~fsdistill.data.discover.recorded_category_ids`)."""
        return recorded_category_ids(self.loaded.config)

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """B×3×size×size uint8 → B×(N+1)×h×w float logits (the model normalises the images itself)."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            # The uint8 batch is reordered (a quarter of the bytes of the float one); normalising keeps the layout.
            images = images.contiguous(memory_format=torch.channels_last)
        with mixed_precision(self.device, self.dtype):
            return self.loaded.logits(images).float()

    def identity(self) -> dict:
        return {
            "model": str(self.loaded.path.resolve()),
            "config_sha256": config_sha256(self.loaded.config),
            "weights_sha256": str(self.loaded.config.get("weights_sha256", "")),
            "backend": "torch",
        }


@dataclass
class PredictResult:
    """What a predict run did. ``out_dir`` and ``csv_path`` are Paths, or URIs (str) for an object-store -o."""

    out_dir: Path | str
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    csv_path: Path | str | None = None
    format_paths: dict[str, list[Path]] = field(default_factory=dict)  # --format: files written per format
    scored: int = 0  # masks of earlier runs given the scores --format needs (the model ran on their images again)


def _overlay(image: np.ndarray, mask: np.ndarray, palette: list[tuple[int, int, int]], rows: int = 512) -> np.ndarray:
    """The H×W×3 uint8 image with its foreground pixels half their class colour (the mean rounded half to even, as
    float rounding did), in integer arithmetic, ``rows`` image rows at a time: a 12,000 × 9,000 image took 7 GB as
    float32 copies of the whole image."""
    colours = np.array(palette, dtype=np.uint16)
    out = image.copy()
    for top in range(0, mask.shape[0], rows):
        band = mask[top : top + rows]
        total = out[top : top + rows].astype(np.uint16) + colours[np.minimum(band, len(palette) - 1)]
        half = total >> 1
        mean = (half + (total & half & 1)).astype(np.uint8)  # x.5 goes to the even neighbour
        np.copyto(out[top : top + rows], mean, where=band[..., None] > 0)
    return out


def write_mask(
    out: Storage, key: str, mask: np.ndarray, palette: list[tuple[int, int, int]], text: dict | None = None
) -> None:
    """Write an H×W uint8 class-id mask as the index PNG ``key`` of ``out``, whole or not at all."""
    out.write_bytes(key, encode_index_png(mask, palette, text))


def _stored_mask(out: Storage, key: str) -> np.ndarray:
    """The H×W class ids of a mask an earlier run wrote to ``out`` (an index PNG of :func:`write_mask`)."""
    try:
        with Image.open(io.BytesIO(out.read_bytes(key))) as image:
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"Cannot read the mask {out.display(key)} of an earlier run ({exc}); delete it and run predict again."
        ) from None


def _mask_counts(mask: np.ndarray, num_classes: int) -> tuple[int, int, np.ndarray]:
    """H×W class ids → (height, width, pixels of each class 0..num_classes-1)."""
    if num_classes <= 32:
        # One comparison per class: np.bincount widens every pixel to int64 first (20× slower for two classes).
        counts = np.array([np.count_nonzero(mask == c) for c in range(num_classes)], dtype=np.int64)
    else:
        counts = np.bincount(mask.ravel(), minlength=num_classes)[:num_classes]
    return mask.shape[0], mask.shape[1], counts


def _write_csv(
    out: Storage,
    entries: list[tuple[Source, Path]],
    class_names: list[str],
    known: dict[str, tuple[int, int, np.ndarray]],
    earlier: set[str],
    name: str,
) -> Path | str:
    """Write the table ``name`` (predictions.csv, or a shard's) for every mask of ``entries`` in ``out``: those
    this run wrote (``known``: their counts by key) and those an earlier run left (``earlier``: their keys, read
    back); returns where it is."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_HEADER)
    for source, rel in entries:
        key = _output_key("masks", rel)
        if key in known:
            h, w, counts = known[key]
        elif key in earlier:
            h, w, counts = _mask_counts(_stored_mask(out, key), len(class_names))
        else:
            continue
        for cls, class_name in enumerate(class_names):
            writer.writerow([str(source), w, h, class_name, int(counts[cls]), f"{counts[cls] / (h * w):.6f}"])
    out.write_bytes(name, text.getvalue().encode("utf-8", "surrogateescape"))
    return out.location(name)


def _output_key(folder: str, rel: Path) -> str:
    return f"{folder}/{rel.with_suffix('.png').as_posix()}"


# The PNG text chunks of a mask naming the model that made it (its weights' hash) and the file it was made from (its
# size and modification time): resume redoes a mask of another model (an --overwrite stopped half-way, then resumed)
# or of another file (an image replaced or edited since, or another folder's image of the same relative name
# predicted into this -o). Not the file's path, so a folder moved or copied with its dates resumes, and the same
# model writes the same bytes from the same file. An object-store image is stamped with the size and modification
# time its listing gave; masks of earlier versions have neither and count as done.
STAMP_KEY = "fsdistill:model"
SOURCE_KEY = "fsdistill:source"


def _source_stamp(source: Source) -> str | None:
    """``size:mtime_ns`` of an image file: a local one's now, an object's as the listing that found it gave it
    (no request per object); None when it cannot be stat'ed or was not listed."""
    if not isinstance(source, Path):
        return source.stamp
    try:
        status = source.stat()
    except OSError:
        return None
    return f"{status.st_size}:{status.st_mtime_ns}"


def _is_stale(mask_path: Path, model_stamp: str, source: Source) -> bool:
    """Whether a mask an earlier run wrote was made by another model or from another file than ``source`` is now
    (see :data:`SOURCE_KEY`); a mask of an earlier version, with no source stamp, when it is no longer at the size
    of its (local) image."""
    try:
        with Image.open(mask_path) as image:  # info: the text chunks before the pixels (.text would decode them)
            model, made_from, size = image.info.get(STAMP_KEY), image.info.get(SOURCE_KEY), image.size
    except (OSError, ValueError, SyntaxError):
        return True  # unreadable: predict it again
    if model is not None and model != model_stamp:
        return True
    if made_from is not None:
        return made_from != _source_stamp(source)
    if isinstance(source, Path):
        try:
            return image_size(source) != size
        except DataError:
            return True  # no longer readable: its error is reported when it is tried
    return False


def _remove_local(out: Storage, *keys: str) -> None:
    """Delete output files of a local -o (a mask or overlay no longer true to its image); object stores keep them."""
    if out.local is not None:
        for key in keys:
            (out.local / key).unlink(missing_ok=True)


def predict_files(
    predictor: Runner,
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    batch_size: int = 8,
    overlay: bool = False,
    overwrite: bool = False,
    workers: int = 2,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    formats: FormatOptions | None = None,
    shard: Shard | None = None,
) -> PredictResult:
    """Predict every image of ``inputs`` into ``out_dir`` (masks/, overlays/, predictions.csv) with any
    :class:`Runner`; the arguments are :func:`fsdistill.api.predict`'s. Images whose mask already exists are
    skipped unless ``overwrite``; a folder written by another model or backend is refused (DataError)."""
    out = open_storage(out_dir)
    formats = formats or FormatOptions()
    if shard is not None and formats.formats != ("png",):
        raise ConfigError(
            "--format writes one file for all images, so it cannot be combined with --shard; run predict once more "
            "without --shard after the shards are done (it predicts nothing again) to write the formats."
        )
    if out.local is None and formats.formats != ("png",):
        # The pre-label writers read the masks back and write their files in a folder on this machine.
        raise ConfigError(
            f"--format {','.join(f for f in formats.formats if f != 'png')} writes to a local -o folder only; "
            f"predict into a local folder, or drop it for {out}."
        )
    check_class_names(formats, predictor.class_names)
    all_entries = list_images(inputs, out)
    check_file_names(formats, [rel.as_posix() for _, rel in all_entries])
    entries = shard.select(all_entries) if shard is not None else all_entries
    if on_total is not None:
        on_total(len(entries))
    out.ensure_writable("-o")
    identity = predictor.identity()
    if not out.is_file(MANIFEST_NAME) and (out.files("masks") or out.files("overlays")):
        # The manifest is written before the first mask: masks without one are not predict's (a labelled folder's
        # ground truth, say), and would count as done or be overwritten, whatever --overwrite says.
        raise DataError(
            f"{out} already holds masks/ or overlays/ that fsdistill predict did not write (no {MANIFEST_NAME}); "
            "choose another -o folder."
        )
    if out.is_file(MANIFEST_NAME) and not overwrite:
        try:
            previous = json.loads(out.read_bytes(MANIFEST_NAME))
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {}
        # The weights too (the config hash leaves them out): where both manifests name them (earlier ones do not).
        weights = previous.get("weights_sha256"), identity.get("weights_sha256")
        if previous.get("config_sha256") != identity["config_sha256"] or (all(weights) and weights[0] != weights[1]):
            raise DataError(
                f"{out} holds masks from another model ({previous.get('model', 'unknown')}); pass --overwrite or "
                "a new -o folder."
            )
        # Manifests written before there was an ONNX backend have no "backend" key: those masks came from torch.
        if previous.get("backend", "torch") != identity["backend"]:
            raise DataError(
                f"{out} holds masks predicted with the {previous.get('backend', 'torch')} backend; pass "
                f"--overwrite or a new -o folder to predict with the {identity['backend']} backend."
            )
    _write_manifest(out, identity, unique=shard is not None)
    if overwrite and out.local is not None:
        # Derived from the masks being replaced (written again at the end): a stopped --overwrite must not leave the
        # old model's tables beside the new model's manifest.
        remove_format_files(out.local)
        _remove_local(out, PREDICTIONS_CSV, *([shard.csv_name()] if shard is not None else []))
    result = PredictResult(out.location(""))
    # One listing of what earlier runs wrote (not one existence check per image: a request each in a bucket).
    earlier = out.files("masks")
    earlier_overlays = out.files("overlays") if overlay else set()
    todo: list[tuple[Source, Path]] = []
    model_stamp = identity.get("weights_sha256") or identity["config_sha256"]
    for source, rel in entries:
        key = _output_key("masks", rel)
        done = key in earlier
        if done and not overwrite and out.local is not None:
            done = not _is_stale(out.local / key, model_stamp, source)
        if overlay:
            done = done and _output_key("overlays", rel) in earlier_overlays
        if done and not overwrite:
            result.skipped += 1
            if on_progress:
                on_progress(1)
        else:
            todo.append((source, rel))
    if todo and out.local is not None:
        # Masks are about to change (images redone, replaced or failing): a format file an earlier run wrote would
        # describe the old ones. Those asked for now are written again at the end; the others go.
        remove_format_files(out.local)
    palette = predictor.palette
    written: dict[str, tuple[int, int, np.ndarray]] = {}
    for index, mask, probs, error in predictor.outputs([s for s, _ in todo], batch_size, workers, formats.scored):
        source, rel = todo[index]
        if error is not None:
            result.failed.append((str(source), error))
            # An earlier mask of an image that no longer reads is not its prediction: not listed, not done.
            earlier.discard(_output_key("masks", rel))
            _remove_local(out, _output_key("masks", rel), _output_key("overlays", rel))
        else:
            if overlay:
                out.write_bytes(_output_key("overlays", rel), png_bytes(_overlay(read_image(source), mask, palette)))
            else:  # an earlier run's overlay would show another mask than the one written now
                _remove_local(out, _output_key("overlays", rel))
            # The mask goes last: its presence is what marks an image as done.
            made_from = _source_stamp(source)
            text = {STAMP_KEY: model_stamp} | ({SOURCE_KEY: made_from} if made_from else {})
            text |= {} if probs is None else scores_text(mask, probs)
            write_mask(out, _output_key("masks", rel), mask, palette, text)
            written[_output_key("masks", rel)] = _mask_counts(mask, len(predictor.class_names))
            result.written += 1
        if on_progress:
            on_progress(1)
    if not out.is_file(MANIFEST_NAME):
        # The output folder was removed (or emptied) while the run wrote into it: the masks written before are gone
        # and a table would list them. The manifest is written again so that the rerun resumes here.
        _write_manifest(out, identity, unique=True)
        missing = sum(not out.is_file(key) for key in written)
        raise DataError(
            f"{out} was removed or emptied while predict wrote into it ({missing} of the masks written are gone); "
            "run the same command again to write them."
        )
    table = PREDICTIONS_CSV if shard is None else shard.csv_name()
    result.csv_path = _write_csv(out, entries, predictor.class_names, written, earlier, table)
    if shard is not None:
        merged = merge_shard_tables(out, shard, [str(source) for source, _ in all_entries])
        result.csv_path = merged or result.csv_path
    if formats.scored:
        assert out.local is not None
        result.scored = add_missing_scores(predictor, entries, out.local, batch_size, workers)
    if out.local is not None:
        result.format_paths = write_formats(
            out.local, entries, predictor.class_names, palette, identity["config_sha256"], formats,
            predictor.category_ids if "coco" in formats.formats else None,
        )  # fmt: skip
    return result
