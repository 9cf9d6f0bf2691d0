"""Ownership by rendezvous hashing, node ordinals, and the cluster config keys."""

from __future__ import annotations

from collections import Counter

import pytest

from oxyd.cluster.ring import node_ordinal, owner, peer_url
from oxyd.config import ConfigError, load

IDS = [f"tenant-{i}" for i in range(3000)]


def test_owner_is_stable_and_spread_evenly():
    assert [owner(t, 3) for t in IDS[:50]] == [owner(t, 3) for t in IDS[:50]]
    counts = Counter(owner(t, 3) for t in IDS)
    assert set(counts) == {0, 1, 2}
    assert all(abs(c - 1000) < 120 for c in counts.values()), counts
    assert {owner(t, 1) for t in IDS} == {0}


def test_scale_out_moves_only_to_the_new_node_and_about_one_in_n():
    moved = [t for t in IDS if owner(t, 4) != owner(t, 3)]
    assert all(owner(t, 4) == 3 for t in moved)  # never between two old nodes
    assert 0.2 < len(moved) / len(IDS) < 0.3
    back = [t for t in IDS if owner(t, 3) != owner(t, 4)]
    assert back == moved  # scale-in is the mirror image


def test_node_ordinal_from_the_hostname():
    assert node_ordinal("auto", "oxyd-0") == 0
    assert node_ordinal("auto", "oxyd-12.oxyd-peers.default.svc") == 12
    assert node_ordinal("3", "whatever") == 3
    with pytest.raises(ValueError, match="OXYD_CLUSTER_NODE"):
        node_ordinal("auto", "laptop")
    assert peer_url("http://oxyd-{n}.oxyd-peers:8780/", 2) == "http://oxyd-2.oxyd-peers:8780"


def test_cluster_config_keys(tmp_path):
    token = tmp_path / "t"
    cfg = load(
        env={
            "OXYD_CLUSTER_NODES": "3",
            "OXYD_CLUSTER_NODE": "1",
            "OXYD_CLUSTER_PEER_URL": "http://oxyd-{n}.oxyd-peers:8780",
            "OXYD_CLUSTER_TOKEN_FILE": str(token),
        }
    )
    assert (cfg.cluster.nodes, cfg.cluster.node) == (3, "1")
    assert load(env={}).cluster.nodes == 1  # off by default
    with pytest.raises(ConfigError, match=r"cluster\.peer_url"):
        load(env={"OXYD_CLUSTER_NODES": "2", "OXYD_CLUSTER_TOKEN_FILE": str(token)})
    with pytest.raises(ConfigError, match=r"cluster\.token_file"):
        load(env={"OXYD_CLUSTER_NODES": "2", "OXYD_CLUSTER_PEER_URL": "http://h-{n}:1"})
    with pytest.raises(ConfigError, match=r"cluster\.node"):
        load(env={"OXYD_CLUSTER_NODE": "first"})
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("cluster:\n  node: 2\n")
    assert load(yaml_file, env={}).cluster.node == "2"
