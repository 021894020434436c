"""The rollout planner: one pure brain shared by the Kubernetes operator and the local runtime.

`plan(cluster_name, spec, observed)` turns what the hands report (`Observed`) and what the user
asks for (`RecommenderClusterSpec`) into the next `Action`s, the new status and when to look
again. It performs no I/O and never reads the clock (`Observed.now` is an input), so every
decision is a plain function call in tests. The hands (kopf handlers, `recctl up`) execute the
actions with their own means and report back on the next pass.

Modules: `layouts` (what a layout is and its id), `observed` (the planner's input), `actions`
(its output), `predicates` (named safety rules), `planner` (the state machine), `rolls`
(template rolls, shard by shard), `status` (the status and its conditions),
`retention` (which built layouts the store keeps), `carrying` (the carry of logged item writes
into a new layout, driven through a carrier), `canary` (the canary state machine of
`rollout.strategy: Canary`) and `canary_pass` (where it sits in a pass).
"""

from shardrec.planning.actions import (
    Action,
    DeleteArtifacts,
    DeleteCarrier,
    DeleteLayout,
    EnsureBuild,
    EnsureCarrier,
    EnsureShards,
    EventType,
    RecordEvent,
    ReplaceShardPod,
    RetireLayout,
    RouteCanary,
    StageRouter,
    SwitchRouter,
)
from shardrec.planning.fleet import RouterObservation
from shardrec.planning.layouts import (
    LAYOUT_ID_LENGTH,
    LayoutSpec,
    layout_id,
    layout_spec_of,
)
from shardrec.planning.observed import (
    BuildState,
    Observed,
    ObservedBuild,
    ObservedCarrier,
    ObservedLayout,
    ObservedPod,
    ObservedRouter,
    ObservedShard,
    OfflineQuality,
)
from shardrec.planning.planner import Plan, plan
from shardrec.planning.predicates import PREDICATES, Predicate
from shardrec.planning.timestamps import format_time, parse_time

__all__ = [
    "LAYOUT_ID_LENGTH",
    "PREDICATES",
    "Action",
    "BuildState",
    "DeleteArtifacts",
    "DeleteCarrier",
    "DeleteLayout",
    "EnsureBuild",
    "EnsureCarrier",
    "EnsureShards",
    "EventType",
    "LayoutSpec",
    "Observed",
    "ObservedBuild",
    "ObservedCarrier",
    "ObservedLayout",
    "ObservedPod",
    "ObservedRouter",
    "ObservedShard",
    "OfflineQuality",
    "Plan",
    "Predicate",
    "RecordEvent",
    "ReplaceShardPod",
    "RetireLayout",
    "RouteCanary",
    "RouterObservation",
    "StageRouter",
    "SwitchRouter",
    "format_time",
    "layout_id",
    "layout_spec_of",
    "parse_time",
    "plan",
]
