"""Shared pytest fixtures and the ``examples`` marker's skip rule; the helpers they use live in helpers.py.

``syn_*`` fixtures (data tests): build small synthetic support folders on disk with numpy + Pillow, no downloads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_MODEL, SynData, TinyData, examples_dir, examples_missing, tiny_distill


@pytest.fixture
def syn_data() -> SynData:
    """Writers for synthetic support data (see :class:`SynData`)."""
    return SynData()


@pytest.fixture
def syn_binary(tmp_path: Path, syn_data: SynData) -> tuple[Path, list[np.ndarray]]:
    """A paired ``images/`` + ``masks/`` folder of 3 PNG pairs with 0/255 disc masks, and the discs."""
    root = tmp_path / "binary"
    return root, syn_data.paired(root)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> TinyData:
    """Tiny synthetic support/held-out folders: binary (4 + 3 images) and 3-class index (6 + 3 images)."""
    return TinyData(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def tiny_binary_run(tiny_data: TinyData, tmp_path_factory):
    """A test-resnet/64 px distill run (teacher + student, 2 steps) on the binary tiny folder, trained once."""
    return tiny_distill(tiny_data.binary, tmp_path_factory.mktemp("runs") / "binary")


@pytest.fixture(scope="session")
def tiny_multi_run(tiny_data: TinyData, tmp_path_factory):
    """A test-resnet/64 px distill run on the 3-class tiny folder, trained once."""
    return tiny_distill(tiny_data.multi, tmp_path_factory.mktemp("runs") / "multi")


@pytest.fixture(scope="session")
def shaken_multi_student(tiny_multi_run, tmp_path_factory) -> Path:
    """``tiny_multi_run``'s student with its decoder and ConvDist weights shaken (seeded), saved as an artifact.

    Two training steps leave the tiny student predicting background everywhere, which makes any comparison of
    two prediction runs trivially equal. The shake (N(0, 0.1) on every non-backbone parameter) uses the first
    seed under which the student predicts all four classes on a batch of small synthetic images, so the fixture
    does not depend on one seed suiting one decoder layout; the tests that use it assert the four classes too.
    """
    import torch

    from fsdistill.models.build import load_model, save_model

    loaded = load_model(tiny_multi_run.run_dir, kind="student")
    size = loaded.config["input_size"]
    probe = torch.from_numpy(np.stack([SynData.image(size, size, i) for i in range(8)])).permute(0, 3, 1, 2)
    colours = torch.randint(0, 255, (8, 3, 1, 1), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    probe[:, :, size // 4 : size // 2, size // 3 : 2 * size // 3] = colours  # a square, as in the tests' images
    trained = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    num_labels = len(loaded.config["class_names"])
    for seed in range(64):
        loaded.model.load_state_dict(trained)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in loaded.model.named_parameters():
                if not name.startswith("backbone."):
                    param.add_(torch.randn(param.shape, generator=generator) * 0.1)
            if loaded.model.predict(probe).argmax(1).unique().numel() == num_labels:
                break
    else:
        raise AssertionError("no shake seed in 0..63 makes the tiny student predict every class")
    config = loaded.config
    return save_model(
        tmp_path_factory.mktemp("shaken") / "student",
        loaded.model,
        loaded.model_cfg,
        class_names=config["class_names"],
        palette=[tuple(c) for c in config["palette"]],
        train_config=config["train_config"],
        support_info=config["support"],
        training=config["training"],
    )


@pytest.fixture(scope="module")
def tiny_pool_models(tiny_data):
    """A random tiny teacher + student on the 3-class tiny folder, with its feature cache (pool labelling tests)."""
    import torch

    from fsdistill.config import ModelCfg
    from fsdistill.data.discover import discover
    from fsdistill.data.support_tensors import load_support_tensors
    from fsdistill.models.build import build_student, build_teacher
    from fsdistill.train.episodes import FeatureCache

    torch.manual_seed(0)
    cfg = ModelCfg(**TINY_MODEL)
    index = discover(tiny_data.multi)
    teacher = build_teacher(cfg, len(index.class_names) - 1, pretrained=False)
    student = build_student(teacher, cfg.student_width, cfg.refiner)
    support = load_support_tensors(index, cfg.size)
    cache = FeatureCache(teacher, support, torch.device("cpu"), augment=False)
    return teacher, student, cache, support


# --- the real example data: tests marked ``examples`` (pytest -m "not examples" leaves them out) -----------------


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that asks for ``examples_root`` must carry the marker, or ``-m "not examples"`` would still run it."""
    unmarked = [
        item.nodeid
        for item in items
        if "examples_root" in getattr(item, "fixturenames", ()) and item.get_closest_marker("examples") is None
    ]
    if unmarked:
        raise pytest.UsageError("these tests use examples_root without @pytest.mark.examples: " + ", ".join(unmarked))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``examples`` skip (never build or download) when the example data is not built."""
    if item.get_closest_marker("examples") is not None:
        reason = examples_missing(examples_dir())
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def examples_root() -> Path:
    """The real example data (``examples/make_examples.py``): ``$FSDISTILL_EXAMPLES``, else ``examples/data``.

    Only for tests marked ``examples``, which are skipped before they run when it is not built.
    """
    return examples_dir()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs for one module's Ray tests (started once, shut down after them, so a module
    that simulates nodes with ``ray.cluster_utils.Cluster`` finds none running); skipped without the ray extra."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()
