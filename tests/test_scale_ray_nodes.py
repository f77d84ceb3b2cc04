"""``predict --engine ray`` across two Ray nodes (a ``ray.cluster_utils.Cluster`` in this process; skipped
without the ray extra). In its own module: the cluster cannot share a process with test_scale's local one."""

from __future__ import annotations

import pytest
from PIL import Image

from fsdistill import api

from helpers import SynData


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node of one CPU each: two actors of one CPU can only run one on each node."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    cluster.wait_for_nodes()
    yield ray
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.ray
def test_two_node_ray_predict_equals_local(two_nodes, shaken_multi_student, tmp_path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for i in range(6):
        image = SynData.image(40 + 7 * i, 56 - 3 * i, i)
        image[10:20, 12:30] = (30 * i, 220, 70)
        Image.fromarray(image).save(root / f"img{i}.png")
    assert len([n for n in two_nodes.nodes() if n["Alive"]]) == 2
    kw = {"device": "cpu", "batch_size": 2}
    local = api.predict([root], tmp_path / "local", shaken_multi_student, workers=0, **kw)
    remote = api.predict([root], tmp_path / "ray", shaken_multi_student, engine="ray", workers=2, **kw)
    assert local.written == remote.written == 6 and remote.failed == []
    for name in ["predictions.csv"] + [f"masks/img{i}.png" for i in range(6)]:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
