"""The cut of one network interface, as a state machine: where the ENI is, what happened,
and what Cordon does next. Pure: no AWS here, so every path is tested without moto; the
driver in `handlers.isolation` makes the moves and feeds their outcomes back as events.

    own ──opened──▶ open ──go──▶ (seal) ──sealed──▶ severed
     │                │ └─slow─▶ stepping-back ──back──▶ waiting ──go──▶ own (cross again)
     │                │                                    └─hold─▶ back
     │                └─hold / seal failed─▶ retreating ──back──▶ back
     └─unanswered─▶ maybe-open ──go──▶ (seal) ──sealed──▶ sealed   (not known converted)

Fail safe by construction: every state that can hold the ENI on the allow-all group
(`open`, `maybe-open`, `stepping-back`, `retreating`) has a transition for every event
the driver can feed it, and each leads off that group or to `stranded` (a move back that
failed even after its retries: the one outcome that raises the alarm). `severed` is the
only state that says the ENI's tracked flows were ended: sealed after crossing an
allow-all cordon-open. `sealed` is on the sealed group without that being known (the
open move's answer was lost, or cordon-open had drifted), and a step never reports it as
a conversion that happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class State(StrEnum):
    OWN = "own"                      # on its own groups (crossing again: sealed), to cross
    OPEN = "open"                    # on cordon-open: its flows are untracked now
    MAYBE_OPEN = "maybe-open"        # the open move failed or its answer was lost
    STEPPING_BACK = "stepping-back"  # going back to its own groups to wait there
    WAITING = "waiting"              # on its own groups until the steps before the cut answer
    RETREATING = "retreating"        # going back for good: not to be cut
    SEVERED = "severed"              # sealed after crossing an allow-all cordon-open
    SEALED = "sealed"                # sealed, the crossing not known to have converted
    BACK = "back"                    # on its own groups, not cut (held, or the seal failed)
    # (crossing again, `back` is cordon-sealed: such a run ends `sealed`)
    STRANDED = "stranded"            # the move back failed: it may be on cordon-open


class Event(StrEnum):
    OPENED = "opened"            # the move to cordon-open answered
    UNANSWERED = "unanswered"    # it failed, or its answer never came (it may have landed)
    GO = "go"                    # the steps before the cut have answered, all well
    HOLD = "hold"                # one of them failed: do not cut
    SLOW = "slow"                # they have not answered within SEAL_WAIT
    SEALED = "sealed"            # the move to cordon-sealed answered
    SEAL_FAILED = "seal-failed"  # it failed after its retries
    BACK_DONE = "back-done"      # the move back to its own groups answered
    BACK_FAILED = "back-failed"  # it failed after its retries
    DRIFTED = "drifted"          # cordon-open was found not to allow all traffic


class Do(StrEnum):
    OPEN = "open"          # move it to cordon-open
    ASK = "ask"            # wait for the steps before the cut, at most SEAL_WAIT
    ASK_LONG = "ask-long"  # wait for them without bound (it is not on the open group)
    SEAL = "seal"          # move it to cordon-sealed
    BACK = "back"          # move it back to its own groups (those of the click)
    NOTHING = "nothing"    # done


FINAL = frozenset({State.SEVERED, State.SEALED, State.BACK, State.STRANDED})
# Where the ENI may be on the allow-all group.
EXPOSED = frozenset({State.OPEN, State.MAYBE_OPEN, State.STEPPING_BACK, State.RETREATING})

_CROSSING = {State.OPEN, State.MAYBE_OPEN}
TRANSITIONS: dict[tuple[State, Event], tuple[State, Do]] = {
    (State.OWN, Event.OPENED): (State.OPEN, Do.ASK),
    (State.OWN, Event.UNANSWERED): (State.MAYBE_OPEN, Do.ASK),
    (State.OPEN, Event.SEALED): (State.SEVERED, Do.NOTHING),
    (State.MAYBE_OPEN, Event.SEALED): (State.SEALED, Do.NOTHING),
    (State.STEPPING_BACK, Event.BACK_DONE): (State.WAITING, Do.ASK_LONG),
    # It could not step back: it is (or may be) on the open group, waiting there.
    (State.STEPPING_BACK, Event.BACK_FAILED): (State.MAYBE_OPEN, Do.ASK_LONG),
    (State.WAITING, Event.GO): (State.OWN, Do.OPEN),
    (State.WAITING, Event.HOLD): (State.BACK, Do.NOTHING),
    (State.RETREATING, Event.BACK_DONE): (State.BACK, Do.NOTHING),
    (State.RETREATING, Event.BACK_FAILED): (State.STRANDED, Do.NOTHING),
    # cordon-open was not allow-all when it crossed: the rules restored, it crosses again.
    (State.SEVERED, Event.DRIFTED): (State.OWN, Do.OPEN),
    (State.SEALED, Event.DRIFTED): (State.OWN, Do.OPEN),
}
for _state in _CROSSING:
    TRANSITIONS[(_state, Event.GO)] = (_state, Do.SEAL)
    TRANSITIONS[(_state, Event.HOLD)] = (State.RETREATING, Do.BACK)
    TRANSITIONS[(_state, Event.SLOW)] = (State.STEPPING_BACK, Do.BACK)
    TRANSITIONS[(_state, Event.SEAL_FAILED)] = (State.RETREATING, Do.BACK)


class BadTransition(Exception):
    pass


@dataclass
class EniCutMachine:
    """One ENI's cut. `fire` takes what happened and returns what to do next; `history`
    keeps every (state, event, next state) for the record and the tests."""

    state: State = State.OWN
    # A worker that is stopping (its lease lost) never waits: a slow answer is a hold.
    quitting: bool = False
    # Crossing again (cordon-open had drifted, or the first crossing was not confirmed):
    # it starts from cordon-sealed, and that is where any move back takes it — never
    # looser than it was a moment ago. It then ends sealed, not known severed.
    again: bool = False
    history: list[tuple[State, Event, State]] = field(default_factory=list)

    def start(self) -> Do:
        if self.state is not State.OWN:
            raise BadTransition(f"a cut starts on the ENI's own groups, not {self.state}")
        return Do.OPEN

    def fire(self, event: Event) -> Do:
        if self.quitting and event is Event.SLOW:
            event = Event.HOLD
        try:
            after, do = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise BadTransition(f"{event} cannot happen in {self.state}") from None
        if self.quitting and do is Do.ASK_LONG:
            # Stopping: no unbounded wait. Off the open group if it may be there, else done.
            after, do = ((State.RETREATING, Do.BACK) if after in EXPOSED
                         else (State.BACK, Do.NOTHING))
        if event is Event.DRIFTED:
            self.again = True
        elif self.again and after is State.BACK:
            after = State.SEALED  # back where it rested: on cordon-sealed
        self.history.append((self.state, event, after))
        self.state = after
        return do

    @property
    def done(self) -> bool:
        return self.state in FINAL

    @property
    def cut(self) -> bool:
        return self.state in (State.SEVERED, State.SEALED)

    @property
    def converted(self) -> bool:
        """Its tracked flows were made untracked before it was sealed."""
        return self.state is State.SEVERED
