"""Where workers go: one placement group per worker, on a node absa chooses by a documented strategy.

Every worker holds its slot through a single-bundle placement group of its own, so a resize adds or removes exactly
the bundles of the workers that come or go and never moves a survivor (a Ray placement group cannot change size).
The node is chosen here, from the cluster's free slots per node and the nodes this run's workers already use:

- ``pack``: the nodes that already hold this run's workers first (most workers first), then the node with the most
  free slots. On GPUs the all-reduce then stays inside a node (NVLink/PCIe) as long as the node has room, instead of
  crossing the network; on CPUs it stays on loopback.
- ``spread``: each next worker on the node with the fewest of this run's workers (ties: the most free slots), for
  memory bandwidth or for fewer workers lost with one node.

A worker for which no node has a free slot gets a bundle without a node (Ray places it where room appears; a
pending bundle is also a demand the autoscaler sees). The default is ``cluster.placement=pack`` on both device
kinds; docs/cluster.md explains the choice.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

STRATEGIES = ("pack", "spread")


def choose_nodes(free: Mapping[str, int], ours: Mapping[str, int], count: int, strategy: str) -> list[str | None]:
    """Nodes for ``count`` new workers, in order; ``None`` where no node has a free slot left.

    ``free``: free worker slots per node; ``ours``: this run's workers per node (survivors and spares)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown placement strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    left = {node: slots for node, slots in free.items() if slots > 0}
    held = Counter({node: n for node, n in ours.items() if n > 0})
    chosen: list[str | None] = []
    for _ in range(count):
        if not left:
            chosen.append(None)
            continue
        nodes = sorted(left)  # ties: the first node id, so that a choice is reproducible
        if strategy == "pack":
            node = max(nodes, key=lambda n: (held[n], left[n]))
        else:
            node = min(nodes, key=lambda n: (held[n], -left[n]))
        chosen.append(node)
        held[node] += 1
        left[node] -= 1
        if left[node] == 0:
            del left[node]
    return chosen


class Placement:
    """This run's placement groups: one per worker, created before the worker and removed with it."""

    def __init__(self, resource: str, strategy: str) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown placement strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
        self.resource = resource
        self.strategy = strategy
        self.bundle = {"GPU": 1, "CPU": 1} if resource == "GPU" else {"CPU": 1}
        self._groups: dict[str, Any] = {}  # worker name → its placement group
        self._nodes: dict[str, str | None] = {}  # worker name → the node it was placed on (None: anywhere)

    def free_slots(self) -> dict[str, int]:
        """Free worker slots per alive node (a slot: one bundle's worth of free resources)."""
        try:
            from ray._private.state import available_resources_per_node  # no public per-node form in Ray 2.60

            per_node = available_resources_per_node()
        except Exception:  # noqa: BLE001 - a Ray without it: no node preference, Ray places every bundle
            return {}
        slots = {}
        for node, resources in per_node.items():
            slots[node] = int(min(resources.get(key, 0) // need for key, need in self.bundle.items()))
        return slots

    def reserve(self, names: list[str]) -> list[Any]:
        """A placement group for each new worker (in the order of ``names``), on the nodes the strategy chooses;
        returns the scheduling strategy for each."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ours = Counter(node for node in self._nodes.values() if node is not None)
        nodes = choose_nodes(self.free_slots(), ours, len(names), self.strategy)
        strategies = []
        for name, node in zip(names, nodes):
            selector = [{"ray.io/node-id": node}] if node else None
            group = placement_group([self.bundle], strategy="STRICT_PACK", name=f"{name}-slot",
                                    bundle_label_selector=selector)
            self._groups[name], self._nodes[name] = group, node
            strategies.append(PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                                               placement_group_capture_child_tasks=False))
        return strategies

    def placed(self, name: str) -> bool:
        """Whether Ray has reserved the worker's slot on a node (its placement group is created)."""
        from ray.util.placement_group import placement_group_table

        group = self._groups.get(name)
        return group is not None and placement_group_table(group).get("state") == "CREATED"

    def release(self, name: str) -> None:
        """Remove a worker's placement group (the worker is gone or retired)."""
        from ray.util.placement_group import remove_placement_group

        group = self._groups.pop(name, None)
        self._nodes.pop(name, None)
        if group is not None:
            try:
                remove_placement_group(group)
            except Exception:  # already removed with its node; nothing is held
                pass

    def release_all(self) -> None:
        for name in list(self._groups):
            self.release(name)
