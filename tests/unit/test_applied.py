"""rtml.operator.applied: when a reconcile may skip applying a child (nothing else does)."""

from __future__ import annotations

from typing import Any

from rtml.operator.applied import Applied


def deployment(image: str = "rt:1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fraud", "namespace": "ml"},
        "spec": {"template": {"spec": {"containers": [{"name": "runtime", "image": image}]}}},
    }


def live(
    obj: dict[str, Any], rv: int, generation: int | None = 1, uid: str = "u1"
) -> dict[str, Any]:
    meta = {**obj["metadata"], "uid": uid, "resourceVersion": str(rv)}
    if generation is not None:
        meta["generation"] = generation
    return {**obj, "metadata": meta}


def test_first_sight_applies_and_a_repeat_is_skipped() -> None:
    applied = Applied()
    assert not applied.unchanged(deployment())
    applied.record(deployment(), live(deployment(), 10))
    assert applied.unchanged(deployment())
    assert not applied.unchanged(deployment("rt:2"))  # a new desired state


def test_a_status_change_does_not_count_but_a_spec_or_label_edit_does() -> None:
    applied = Applied()
    applied.record(deployment(), live(deployment(), 10))
    # A controller wrote status (an HPA has no generation at all: the content decides).
    applied.observe({**live(deployment(), 11, generation=None), "status": {"replicas": 1}})
    assert applied.unchanged(deployment())
    applied.observe(live(deployment("evil:1"), 12, generation=2))  # edited by hand
    assert not applied.unchanged(deployment())
    applied.record(deployment(), live(deployment(), 13, generation=3))
    relabelled = live(deployment(), 14, generation=3)
    relabelled["metadata"]["labels"] = {"rtml.dev/model": "other"}
    applied.observe(relabelled)  # metadata only: no new generation, still a change
    assert not applied.unchanged(deployment())


def test_an_older_event_never_hides_a_newer_version() -> None:
    applied = Applied()
    applied.observe(live(deployment("evil:1"), 12, generation=2))  # the edit's event came first
    applied.record(deployment(), live(deployment(), 10))  # then our older apply's answer
    assert not applied.unchanged(deployment())


def test_a_configmap_edit_counts_and_its_own_event_does_not() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ml"},
          "data": {"a": "1"}}  # fmt: skip
    applied = Applied()
    applied.record(cm, live(cm, 5, generation=None))
    applied.observe(live(cm, 5, generation=None))  # our own apply's event
    assert applied.unchanged(cm)
    applied.observe(live({**cm, "data": {"a": "2"}}, 6, generation=None))  # anyone's write
    assert not applied.unchanged(cm)


def test_deletion_recreation_failure_and_unwatched_kinds_apply_again() -> None:
    applied = Applied()
    applied.record(deployment(), live(deployment(), 10))
    applied.observe(live(deployment(), 13), deleted=True)
    assert not applied.unchanged(deployment())
    applied.record(deployment(), live(deployment(), 14, uid="u2"))
    assert applied.unchanged(deployment())
    applied.observe(live(deployment(), 20, uid="u3"))  # recreated by someone else
    assert not applied.unchanged(deployment())
    applied.record(deployment(), live(deployment(), 21, uid="u3"))
    applied.forget(deployment())  # an apply whose outcome is unknown
    assert not applied.unchanged(deployment())
    exp = {"apiVersion": "rtml.dev/v1alpha1", "kind": "Experiment",
           "metadata": {"name": "e", "namespace": "ml"}, "spec": {}}  # fmt: skip
    applied.record(exp, live(exp, 30))
    assert not applied.unchanged(exp)  # not watched as a child: always applied


def test_pruning_is_repeated_only_when_the_set_of_children_changes() -> None:
    applied = Applied()
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "fraud", "namespace": "ml"}}  # fmt: skip
    assert not applied.pruned("m1", [deployment(), hpa])  # never pruned by this process
    applied.mark_pruned("m1", [deployment(), hpa])
    assert applied.pruned("m1", [hpa, deployment("rt:2")])  # same children, new contents
    assert not applied.pruned("m1", [deployment()])  # the HPA is no longer wanted: prune it
    assert not applied.pruned("m2", [deployment(), hpa])


def test_a_deleted_child_forgets_its_models_pruning() -> None:
    """A child deleted (by hand, or by the garbage collector after its Model was deleted):
    the Model's next reconcile lists its children again, and a deleted Model leaves no entry."""
    applied = Applied()
    applied.mark_pruned("m1", [deployment()])
    applied.mark_pruned("m2", [deployment()])
    owned = {"ownerReferences": [{"kind": "Model", "name": "fraud", "uid": "m1"}]}
    gone = live({**deployment(), "metadata": {**deployment()["metadata"], **owned}}, 9)
    assert not applied.observe(gone, deleted=True)
    assert not applied.pruned("m1", [deployment()])
    assert applied.pruned("m2", [deployment()])  # another Model's children are not touched
    assert "m1" not in applied._pruned


def test_an_annotation_a_kubernetes_controller_adds_is_not_a_change() -> None:
    applied = Applied()
    applied.record(deployment(), live(deployment(), 10))  # the create's answer: no revision yet
    annotated = live(deployment(), 11)
    annotated["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    applied.observe(annotated)
    assert applied.unchanged(deployment())
    annotated = live(deployment(), 12)
    annotated["metadata"]["annotations"] = {"team.example.com/owner": "someone"}
    applied.observe(annotated)  # anyone else's annotation is a change
    assert not applied.unchanged(deployment())


def test_observe_says_whether_the_event_is_the_operators_own_apply_coming_back() -> None:
    """What lets a child's event skip reconciling its Model (handlers.child_changed)."""
    applied = Applied()
    assert not applied.observe(live(deployment(), 10))  # first sight: unknown, so react
    applied.record(deployment(), live(deployment(), 11))
    assert applied.observe(live(deployment(), 11))  # our apply's own event
    assert applied.observe({**live(deployment(), 12), "status": {"readyReplicas": 1}})
    assert not applied.observe(live(deployment("evil:1"), 13))  # a hand edit
    assert not applied.observe(live(deployment(), 14), deleted=True)
    unwatched = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ml"}}
    applied.record(unwatched, live(unwatched, 20))
    assert not applied.observe(live(unwatched, 20))  # a kind not watched is never "as applied"
