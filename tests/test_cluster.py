"""TF_CONFIG → this process's place in the cluster; the local launcher's TF_CONFIGs and exit codes."""

from __future__ import annotations

import json

import pytest

from recall.distributed.cluster import cluster_from_env, collective_timeout
from recall.distributed.launcher import free_ports, launch, tf_configs
from recall.errors import RecallError


def test_no_tf_config_is_no_cluster():
    assert cluster_from_env({}) is None and cluster_from_env({"TF_CONFIG": "  "}) is None


def test_workers_and_a_named_chief():
    spec = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    c = cluster_from_env({"TF_CONFIG": json.dumps(spec)})
    assert (c.num_workers, c.index, c.is_chief) == (2, 1, False)
    spec = {"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    c = cluster_from_env({"TF_CONFIG": json.dumps(spec)})
    assert (c.num_workers, c.index) == (3, 2)
    spec["task"] = {"type": "chief", "index": 0}
    assert cluster_from_env({"TF_CONFIG": json.dumps(spec)}).is_chief


@pytest.mark.parametrize("raw, says", [
    ("{not json", "not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', 'needs "cluster" and "task"'),
    ('{"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}}', "parameter servers"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "not in the cluster"),
])
def test_a_bad_tf_config_is_one_line_naming_it(raw, says):
    with pytest.raises(RecallError, match=says) as err:
        cluster_from_env({"TF_CONFIG": raw})
    assert str(err.value).startswith("TF_CONFIG") and "\n" not in str(err.value)


def test_collective_timeout():
    assert collective_timeout({}) == 60.0 and collective_timeout({"RECALL_COLLECTIVE_TIMEOUT": "5"}) == 5.0
    with pytest.raises(RecallError, match="RECALL_COLLECTIVE_TIMEOUT"):
        collective_timeout({"RECALL_COLLECTIVE_TIMEOUT": "soon"})


def test_launcher_tf_configs_name_every_worker_once():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    configs = [json.loads(c) for c in tf_configs(ports)]
    assert [c["task"]["index"] for c in configs] == [0, 1, 2]
    assert all(c["cluster"]["worker"] == [f"127.0.0.1:{p}" for p in ports] for c in configs)


def test_launcher_reports_the_failing_worker(tmp_path, monkeypatch, capsys):
    # Workers that fail at once (a bad config file): the job's code is theirs and one line names worker 0.
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code = launch([str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "run")], 2, tmp_path / "run",
                  grace=30)
    assert code == 2
    assert "error: worker" in capsys.readouterr().err
    monkeypatch.setenv("TF_CONFIG", "{}")
    with pytest.raises(RecallError, match="TF_CONFIG is already set"):
        launch([], 2, tmp_path / "run")
