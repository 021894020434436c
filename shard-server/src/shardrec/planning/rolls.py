"""Template rolls: a pod-template change reaches the serving layout one shard and one pod at a time.

A change outside the layout (image, resources, `drainSeconds`, scrape annotations) changes every
shard workload's pod template in one apply. The workloads never replace a pod themselves
(StatefulSet `updateStrategy: OnDelete`); this module proposes which pod goes next
(`ReplaceShardPod`, the hands delete it and the StatefulSet recreates it from the new template)
and the named predicates in `predicates` decide whether it may go now:

- `replace_one_shard_at_a_time`: every other shard of the serving layout has all its replicas
  Ready (and none surged), so at most one shard is ever below its replica count;
- `keep_ready_replicas_while_replacing`: the shard keeps `max(replicasPerShard - 1, 1)` Ready
  replicas after the replaced one goes; never 0.

An unready outdated pod may always be replaced (it serves nothing): that is also how a roll to a
broken image is repaired by the next spec change. Layouts that do not serve (a target still
starting) have every outdated pod replaced at once: nobody depends on them.

Order: shards with an outdated unready pod first, then the lowest shard number, and a shard
already surging is finished before any other. Within a shard the highest ordinal goes first.

A single-replica shard is rolled by **surge**: its StatefulSet is scaled to 2 (EnsureShards
`surge`), the StatefulSet controller creates ordinal 1 from the new template (OnDelete creates
every new pod at the update revision), the router topology lists it, and only once it is Ready is
ordinal 0 replaced; once ordinal 0 is back, Ready and updated, the shard is scaled back to 1.
One StatefulSet with a temporary extra ordinal was chosen over a second StatefulSet: the pod
names, the headless Service, the PDB and the topology's per-ordinal URLs all stay as they are,
and no object has to be created or garbage-collected for a roll. Per shard (R = 1):

      desired=1, pod0 old+Ready
           |  EnsureShards(surge={s})              (restart here: same decision)
           v
      desired=2, pod1 new, not Ready  --- waits (keep_ready_replicas_while_replacing) ---
           |  pod1 Ready
           v
      desired=2, pod0 old, pod1 new+Ready
           |  ReplaceShardPod(pod0)
           v
      desired=2, pod0 recreating (pod1 serves)  --- waits: surge kept until pod0 is Ready ---
           |  pod0 new+Ready
           v
      desired=2, both new+Ready
           |  EnsureShards(replicas=1)  (never_delete_last_ready_replica_of_serving_shard)
           v
      desired=1, pod0 new+Ready  -> next shard

With R >= 2 there is no surge: when all R replicas are Ready, the highest outdated ordinal is
replaced, leaving R - 1; the next goes when it is back. The roll's only memory is the world
(pod revisions, readiness, replica counts), so a restart at any step makes the same decision.
If the surge pod cannot start (no room on any node) the roll waits with `status.templateRoll`
naming the predicate and the pod it waits for; the old pod keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardrec.api.v1alpha1 import TemplateRollStatus
from shardrec.planning.actions import ReplaceShardPod
from shardrec.planning.layouts import LayoutSpec
from shardrec.planning.observed import ObservedLayout, ObservedShard


@dataclass(frozen=True)
class RollProposal:
    """What a layout's template roll proposes this pass (before the predicates judge)."""

    surge: frozenset[int]
    """Shards that run one replica more (single-replica shards being rolled)."""
    replace: tuple[ReplaceShardPod, ...]
    """Pods proposed for replacement, in order."""
    shard: int | None
    """The shard being rolled (None: nothing to roll, or the layout does not serve)."""
    waiting: str = ""
    """What the roll itself waits for when it proposes no replacement (predicates say the rest)."""


NO_ROLL = RollProposal(frozenset(), (), None)


def _surge_finished(shard: ObservedShard, replicas: int) -> bool:
    """A surged shard may go back to `replicas` once its controller has seen the template, no pod is
    outdated, and its first `replicas` ordinals are updated and Ready (the ones that stay)."""
    if not shard.template_settled or shard.outdated_pods():
        return False
    staying = [pod for pod in shard.live_pods() if pod.ordinal < replicas]
    return len(staying) == replicas and all(pod.ready and pod.updated for pod in staying)


def _surging(shard: ObservedShard, replicas: int) -> bool:
    return replicas == 1 and shard.desired_replicas > replicas and not _surge_finished(shard, replicas)


def _rolling_shard(shards: list[ObservedShard], replicas: int) -> ObservedShard | None:
    """The one shard to roll: a shard mid-surge first, then one with an outdated unready pod, then
    the lowest-numbered shard with an outdated pod."""
    surging = [shard for shard in shards if _surging(shard, replicas)]
    if surging:
        return surging[0]
    outdated = [shard for shard in shards if shard.template_settled and shard.outdated_pods()]
    stuck = [shard for shard in outdated if any(not pod.ready for pod in shard.outdated_pods())]
    candidates = stuck or outdated
    return candidates[0] if candidates else None


def _replace_all(layout: LayoutSpec, shard: ObservedShard) -> tuple[ReplaceShardPod, ...]:
    return tuple(
        ReplaceShardPod(layout, shard.shard, pod.name, f"{pod.name} runs an older pod template")
        for pod in shard.outdated_pods()
    )


def propose_roll(
    layout: LayoutSpec, observed: ObservedLayout | None, replicas: int, *, serving: bool
) -> RollProposal:
    """The roll step for `layout` this pass. A serving layout rolls one shard: its next outdated pod
    is proposed (unready outdated pods first, each free to go), and a single-replica shard is
    surged. A layout that does not serve has every outdated pod proposed at once."""
    if observed is None:
        return NO_ROLL
    shards = [shard for shard in observed.shards if shard.pods is not None]
    if not serving:
        settled = [shard for shard in shards if shard.template_settled]
        return RollProposal(
            frozenset(), tuple(a for shard in settled for a in _replace_all(layout, shard)), None
        )
    # A surge already under way is kept whatever else happens, until that shard has finished.
    surge = {shard.shard for shard in shards if _surging(shard, replicas)}
    rolling = _rolling_shard(shards, replicas)
    if rolling is None:
        return RollProposal(frozenset(surge), (), None)
    outdated = rolling.outdated_pods()
    unready = [pod for pod in outdated if not pod.ready]
    others_settled = all(shard.at_rest(replicas) for shard in shards if shard is not rolling)
    if replicas == 1 and outdated and not unready:
        if rolling.shard not in surge and not others_settled:
            waiting = "surge waits until every other shard is at rest"
            return RollProposal(frozenset(surge), (), rolling.shard, f"shard {rolling.shard}: {waiting}")
        surge.add(rolling.shard)
    if not rolling.template_settled:
        waiting = f"shard {rolling.shard}: its StatefulSet has not observed its latest spec yet"
        return RollProposal(frozenset(surge), (), rolling.shard, waiting)
    if not outdated:
        waiting = f"shard {rolling.shard}: waiting for its replicas to be Ready on the new template"
        return RollProposal(frozenset(surge), (), rolling.shard, waiting)
    first = unready[:1] or list(outdated[:1])
    proposals = tuple(
        ReplaceShardPod(
            layout,
            rolling.shard,
            pod.name,
            f"{pod.name} runs an older pod template (shard {rolling.shard} of serving layout {layout.id})",
        )
        for pod in first
    )
    return RollProposal(frozenset(surge), proposals, rolling.shard)


def roll_status(
    layout: LayoutSpec,
    observed: ObservedLayout | None,
    replicas: int,
    proposal: RollProposal,
    waiting_for: str,
) -> TemplateRollStatus | None:
    """`status.templateRoll` for the serving layout (None when no shard is being rolled)."""
    if observed is None or proposal.shard is None:
        return None
    updated = 0
    for shard in observed.shards:
        fresh = [pod for pod in shard.live_pods() if pod.updated and pod.ready and shard.template_settled]
        updated += min(len(fresh), replicas)
    return TemplateRollStatus(
        layout=layout.id,
        shard=proposal.shard,
        updated_replicas=updated,
        replicas=layout.shards * replicas,
        surge=proposal.shard in proposal.surge,
        waiting_for=waiting_for,
    )
