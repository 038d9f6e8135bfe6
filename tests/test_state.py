import pytest

from rebootshim.container.state import (
    STATUS_RUNNING,
    STATUS_STOPPED,
    State,
    to_status,
    transition,
)
from rebootshim.errors import FailedPrecondition


def test_rebooting_is_reported_as_running() -> None:
    assert to_status(State.REBOOTING) == STATUS_RUNNING


def test_a_reboot_goes_back_to_running() -> None:
    state = transition(State.RUNNING, State.REBOOTING, "c")
    assert transition(state, State.RUNNING, "c") is State.RUNNING


def test_a_stopped_process_cannot_run_again() -> None:
    with pytest.raises(FailedPrecondition, match="from stopped to running"):
        transition(State.STOPPED, State.RUNNING, "c")


def test_a_created_container_cannot_reboot() -> None:
    with pytest.raises(FailedPrecondition):
        transition(State.CREATED, State.REBOOTING, "c")


def test_deleted_reports_stopped() -> None:
    assert to_status(State.DELETED) == STATUS_STOPPED
