"""rtml.operator.sweep: where the Feast registry sweep runs (docs/operator-scale.md)."""

from __future__ import annotations

import sys

import pytest

from rtml.operator import sweep
from rtml.operator.sweep import SweepUnreachableError, sweep_in_child, sweep_where


@pytest.mark.parametrize(
    ("views_exist", "feast_loaded", "swept", "where"),
    [
        (True, False, False, "here"),  # the operator registers views: Feast is loaded anyway
        (True, True, True, "here"),
        (False, True, True, "here"),  # loaded since (a view registered, then deleted)
        (False, False, False, "child"),  # views deleted while no operator ran: only so
        (False, False, True, "none"),  # nothing registered since: nothing to sweep
    ],
)
def test_the_sweep_loads_feast_into_the_operator_only_when_it_is_there_anyway(
    views_exist: bool, feast_loaded: bool, swept: bool, where: str
) -> None:
    assert sweep_where(views_exist, feast_loaded, swept) == where


def test_the_childs_exit_code_says_unreachable_or_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The child is a real process; one that exits as `rtml feast-sweep` would."""
    for code, error in ((0, None), (sweep.EXIT_UNREACHABLE, SweepUnreachableError),
                        (1, RuntimeError)):  # fmt: skip
        argv = [sys.executable, "-c", f"import sys; sys.exit({code})"]
        monkeypatch.setattr(sweep, "_child_argv", lambda _kubeconfig, a=argv: a)
        if error is None:
            sweep_in_child(None)
        else:
            with pytest.raises(error):
                sweep_in_child(None)


def test_the_child_runs_rtml_feast_sweep_with_the_operators_kubeconfig() -> None:
    argv = sweep._child_argv("/etc/kube/config")
    assert argv == [sys.executable, "-m", "rtml.cli", "feast-sweep", "--kubeconfig",
                    "/etc/kube/config"]  # fmt: skip
    assert sweep._child_argv(None)[-1] == "feast-sweep"  # in a pod: the service account
