"""The per-ENI cut as a state machine, without AWS: every path from the ENI's own groups
ends off the allow-all group (or raises the alarm, `stranded`), and only a crossing of an
allow-all cordon-open followed by the seal counts as severed."""

from __future__ import annotations

import itertools

import pytest

from handlers.eni_cut import (
    EXPOSED,
    FINAL,
    TRANSITIONS,
    BadTransition,
    Do,
    EniCutMachine,
    Event,
    State,
)


def play(*events: Event, quitting: bool = False) -> tuple[EniCutMachine, list[Do]]:
    machine = EniCutMachine(quitting=quitting)
    done = [machine.start()]
    for event in events:
        done.append(machine.fire(event))
    return machine, done


def test_the_plain_cut_is_open_then_sealed_and_severs() -> None:
    machine, done = play(Event.OPENED, Event.GO, Event.SEALED)
    assert done == [Do.OPEN, Do.ASK, Do.SEAL, Do.NOTHING]
    assert machine.state is State.SEVERED and machine.converted and machine.cut


def test_a_lost_open_answer_is_sealed_but_not_called_severed() -> None:
    machine, _ = play(Event.UNANSWERED, Event.GO, Event.SEALED)
    assert machine.state is State.SEALED and machine.cut and not machine.converted


def test_a_slow_detach_waits_on_its_own_groups_and_crosses_again() -> None:
    machine, done = play(Event.OPENED, Event.SLOW, Event.BACK_DONE, Event.GO, Event.OPENED,
                         Event.GO, Event.SEALED)
    assert done == [Do.OPEN, Do.ASK, Do.BACK, Do.ASK_LONG, Do.OPEN, Do.ASK, Do.SEAL,
                    Do.NOTHING]
    assert machine.state is State.SEVERED
    # The unbounded wait happens on its own groups only.
    waits = [after for (_, _, after), do in zip(machine.history, done[1:], strict=True)
             if do is Do.ASK_LONG]
    assert waits == [State.WAITING]


@pytest.mark.parametrize("events", [
    (Event.OPENED, Event.HOLD, Event.BACK_DONE),
    (Event.OPENED, Event.GO, Event.SEAL_FAILED, Event.BACK_DONE),
    (Event.OPENED, Event.SLOW, Event.BACK_DONE, Event.HOLD),
])
def test_a_held_or_failed_seal_goes_back_to_its_own_groups(events: tuple[Event, ...]) -> None:
    machine, done = play(*events)
    assert machine.state is State.BACK and not machine.cut and done[-1] is Do.NOTHING


def test_a_move_back_that_fails_is_stranded_and_nothing_else_is() -> None:
    machine, _ = play(Event.OPENED, Event.HOLD, Event.BACK_FAILED)
    assert machine.state is State.STRANDED


def test_a_step_back_that_fails_waits_where_it_is_then_seals_or_retreats() -> None:
    machine, done = play(Event.OPENED, Event.SLOW, Event.BACK_FAILED, Event.GO, Event.SEALED)
    assert done[3] is Do.ASK_LONG and machine.state is State.SEALED
    machine, _ = play(Event.OPENED, Event.SLOW, Event.BACK_FAILED, Event.HOLD,
                      Event.BACK_DONE)
    assert machine.state is State.BACK


def test_cordon_open_found_drifted_sends_a_severed_eni_across_again() -> None:
    machine, _ = play(Event.OPENED, Event.GO, Event.SEALED)
    assert machine.fire(Event.DRIFTED) is Do.OPEN and machine.state is State.OWN
    assert machine.start() is Do.OPEN
    for event in (Event.OPENED, Event.GO, Event.SEALED):
        machine.fire(event)
    assert machine.state is State.SEVERED


def test_a_second_crossing_whose_seal_fails_goes_back_to_sealed_not_to_its_own_groups(
        ) -> None:
    machine, _ = play(Event.OPENED, Event.GO, Event.SEALED)
    machine.fire(Event.DRIFTED)
    assert machine.start() is Do.OPEN
    for event in (Event.OPENED, Event.GO, Event.SEAL_FAILED):
        do = machine.fire(event)
    assert do is Do.BACK  # the driver moves it to cordon-sealed (see `again`)
    assert machine.fire(Event.BACK_DONE) is Do.NOTHING
    assert machine.state is State.SEALED and machine.cut and not machine.converted


def test_a_stopping_worker_never_waits_unbounded() -> None:
    machine, done = play(Event.UNANSWERED, Event.SLOW, Event.BACK_DONE, quitting=True)
    assert Do.ASK_LONG not in done and machine.state is State.BACK
    machine, done = play(Event.UNANSWERED, Event.GO, Event.SEALED, quitting=True)
    assert machine.state is State.SEALED


def test_an_event_that_cannot_happen_is_refused() -> None:
    machine, _ = play(Event.OPENED, Event.GO, Event.SEALED)
    with pytest.raises(BadTransition):
        machine.fire(Event.GO)


# What the driver can answer to each request.
ANSWERS = {Do.OPEN: (Event.OPENED, Event.UNANSWERED), Do.ASK: (Event.GO, Event.HOLD, Event.SLOW),
           Do.ASK_LONG: (Event.GO, Event.HOLD), Do.SEAL: (Event.SEALED, Event.SEAL_FAILED),
           Do.BACK: (Event.BACK_DONE, Event.BACK_FAILED)}


@pytest.mark.parametrize(("quitting", "again"), [(False, False), (True, False), (False, True)])
def test_every_run_ends_off_the_open_group_or_raises_the_alarm(quitting: bool,
                                                               again: bool) -> None:
    """Every sequence of answers the driver can give (up to two crossings): the machine
    always has a next move, ends in a final state, and `stranded` follows only a failed
    move back from where the ENI may be on the allow-all group. Crossing again from
    cordon-sealed, it never ends looser than sealed (or the alarm)."""
    runs = 0
    for answers in itertools.product(range(3), repeat=8):
        machine = EniCutMachine(quitting=quitting)
        if again:  # sealed once already, then sent across again
            machine.start()
            for event in (Event.OPENED, Event.GO, Event.SEALED, Event.DRIFTED):
                machine.fire(event)
        do, picks = machine.start(), iter(answers)
        for _ in range(12):
            if do is Do.NOTHING:
                break
            options = ANSWERS[do]
            do = machine.fire(options[next(picks, 0) % len(options)])
        assert do is Do.NOTHING and machine.state in FINAL, machine.history
        if machine.state is State.STRANDED:
            before, event, _ = machine.history[-1]
            assert before in EXPOSED and event is Event.BACK_FAILED
        if again:
            assert machine.state in (State.SEVERED, State.SEALED, State.STRANDED)
        runs += 1
    assert runs == 3 ** 8


def test_every_exposed_state_answers_every_event_the_driver_can_give_it() -> None:
    asked = {State.OPEN: Do.ASK, State.MAYBE_OPEN: Do.ASK, State.STEPPING_BACK: Do.BACK,
             State.RETREATING: Do.BACK}
    for state in EXPOSED:
        for event in ANSWERS[asked[state]]:
            assert (state, event) in TRANSITIONS, (state, event)
