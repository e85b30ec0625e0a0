"""Registry of clustering methods, chosen by a short name (``--method NAME``).

Each entry maps a name to ``"module:Class"`` and is imported only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import ClusterConfig, Clusterer, resolve_device

METHODS: dict[str, str] = {
    "infomap": "facecluster.cluster.infomap:InfomapClusterer",
    "threshold": "facecluster.cluster.baselines:ThresholdClusterer",
    "chinese-whispers": "facecluster.cluster.baselines:ChineseWhispersClusterer",
    "hac": "facecluster.cluster.baselines:HACClusterer",
    "adanets": "facecluster.cluster.adanets:AdaNetsClusterer",
    "gcn-v": "facecluster.cluster.gcn_v:GCNVClusterer",
    "gcn-ve": "facecluster.cluster.gcn_e:GCNVEClusterer",
}

#: the method `facecluster run` uses when none is given
DEFAULT_METHOD = "infomap"


def method_class(name: str) -> type[Clusterer]:
    try:
        target = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}") from None
    mod, _, cls = target.partition(":")
    return getattr(importlib.import_module(mod), cls)


def get_clusterer(name: str, **settings: Any) -> Clusterer:
    return method_class(name)(**settings)


__all__ = ["METHODS", "DEFAULT_METHOD", "Clusterer", "ClusterConfig", "get_clusterer", "method_class", "resolve_device"]
