"""A model-based test of slot ownership (docs/slot-ownership.md) on the real Lua scripts.

Processes acquire slots (pinned or not, queueing or try-once), run one prediction under each
pinned lease, renew, release, die, freeze and resume, abandon leases, and adopt each other's
orphans, in any order hypothesis draws, while the Redis clock (TIME and key expiry alike) moves
by small and large steps. The model knows what Redis cannot: which predictions may still be
running. After every step:

- the predictions possibly running under the semaphore (started under a pinned lease, not yet
  ended nor cancelled) never outnumber the limit, and each one's slot is still taken: its
  lease (or the lease that adopted it) is in holders, pinned until the prediction's end at least;
- holders never outnumber the limit; every orphan is in holders and in pins;
- an adopted lease's old id is gone from holders, pins and info: no slot is held by two ids;
- a lease is never lost while its holder's last word on it (its expiry) still runs: a holder
  that renews in time keeps it.

A process knows only what the scripts' replies and grant messages told it; the model adds the
truth about predictions, which an adopter learns from Replicate (rule 3). Keys expire by the
same controlled clock as TIME (`redis_clock`), as they would in Redis: a key's TTL is part of
what keeps a slot taken.

The tests at the end replay, one per fault, sequences the model found in earlier versions of
the scripts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from service.coordination.script_calls import AcquireReply, Admitted, LeaseToRenew, Queued
from tests.unit.script_harness import FakeClock, Harness, done, redis_clock

TTL_MS = 1000
QUEUE_TTL_MS = 3000
PROCESSES = 3
START_S = 1_800_000_000.0
START_MS = 1_800_000_000_000


@dataclass
class Prediction:
    name: str
    # Its end at Replicate: drawn when it starts (at the latest its lease's pin: rule 1), brought
    # forward to the moment of a cancel.
    end_ms: int
    # The lease whose slot it runs under: the one it started with, then each adopter's.
    guard: str

    def running(self, now: int) -> bool:
        return now < self.end_ms

    def cancel(self, now: int) -> None:
        self.end_ms = min(self.end_ms, now)


@dataclass
class Lease:
    lease_id: str
    epoch: str
    # As its holder last learned it: from an acquire or a renewal, a grant message, an adoption.
    expiry_ms: int
    pin_ms: int  # absolute; 0: unpinned
    # The holder's own prediction; for an adopted lease, the one its record names (None: an
    # unnamed orphan).
    prediction: Prediction | None = None
    adopted: bool = False
    annotated: bool = False


@dataclass
class Process:
    token: str
    # Whether it cancels the prediction of a lease it learns it lost (as the lease watchdog
    # does). Safety must not depend on it.
    cancel_on_loss: bool
    state: str = "alive"  # alive | frozen | dead
    leases: dict[str, Lease] = field(default_factory=dict)
    waiters: dict[str, int] = field(default_factory=dict)  # waiter id -> its pin (ms, relative)
    # Grant messages not yet acted on: lease id -> (expiry, epoch, granted at).
    grants: dict[str, tuple[int, str, int]] = field(default_factory=dict)


@dataclass
class Snapshot:
    """The semaphore's sorted sets (member -> score) and the ids in its info hash."""

    holders: dict[str, int]
    pins: dict[str, int]
    orphans: dict[str, int]
    qexp: dict[str, int]
    info: set[str]

    @classmethod
    def read(cls, harness: Harness) -> Snapshot:
        keys = harness.keys
        pipe = harness.client.pipeline(transaction=False)
        for key in (keys.holders, keys.pins, keys.orphans, keys.qexp):
            pipe.zrange(key, 0, -1, withscores=True)
        pipe.hkeys(keys.info)
        *sets, info = pipe.execute()
        holders, pins, orphans, qexp = ({m.decode(): int(s) for m, s in z} for z in sets)
        return cls(holders, pins, orphans, qexp, {k.decode() for k in info})


picks = st.integers(min_value=0, max_value=63)
# Where in (now, pin] a prediction ends, in thousandths of the time left: often at the pin (a
# prediction that runs until Replicate's Cancel-After), else anywhere.
ends = st.one_of(st.just(1000), st.integers(min_value=1, max_value=1000))
# A pin (ms from the acquisition), mostly longer than the lease TTL (1 s), or none.
pins = st.one_of(
    st.sampled_from([2_000, 5_000, 20_000]),
    st.integers(min_value=500, max_value=20_000),
    st.just(0),
)


class SlotOwnershipModel(RuleBasedStateMachine):
    def __init__(self, harness: Harness) -> None:
        super().__init__()
        self.h = harness
        harness.client.flushall()
        harness.clock.now = START_S
        harness.drain_published()
        self.limit = 0
        self.serial = 0
        self.processes: list[Process] = []
        self.predictions: list[Prediction] = []
        # Lease id -> the prediction that ran or runs under its slot.
        self.guards: dict[str, Prediction] = {}
        # Adopted lease id -> its adopter's id.
        self.renamed: dict[str, str] = {}
        # Leases their holders had learned of, adopted since: their ids are never held again.
        self.retired: set[str] = set()
        # Killed processes: what they knew still has to hold (a lease unexpired is theirs).
        self.dead: list[Process] = []
        # Redis as the last invariant check saw it, after the last step (for a precondition).
        self.redis = Snapshot({}, {}, {}, {}, set())

    # -- what a process does -------------------------------------------------------------------

    def now(self) -> int:
        return self.h.now_ms()

    def new_token(self) -> str:
        self.serial += 1
        return f"t{self.serial}"

    def new_id(self, proc: Process) -> str:
        self.serial += 1
        return f"l{self.serial}-{proc.token}"

    def holder(self, proc: Process, prediction: str | None = None) -> dict[str, Any]:
        return {
            "replica": proc.token,
            "purpose": "",
            "prediction_id": prediction,
            "acquired_at": 1.5,
        }

    def live(self) -> list[Process]:
        return [proc for proc in self.processes if proc.state == "alive"]

    def held(self) -> list[tuple[Process, Lease]]:
        return [(proc, lease) for proc in self.live() for lease in proc.leases.values()]

    def waiting(self) -> list[tuple[Process, str]]:
        return [(proc, lease_id) for proc in self.live() for lease_id in proc.waiters]

    def acquire_as(self, proc: Process, lease_id: str, pin_ms: int, queue: bool) -> AcquireReply:
        reply = self.h.acquire(
            lease_id,
            ttl_ms=TTL_MS,
            queue=queue,
            queue_ttl_ms=QUEUE_TTL_MS,
            pin_ms=pin_ms,
            holder=self.holder(proc),
        )
        self.read_grants()
        assert isinstance(reply, Admitted | Queued), reply
        return reply

    def acquired(
        self, proc: Process, lease_id: str, pin_ms: int, reply: Admitted, end: int, annotate: bool
    ) -> None:
        """An acquire said 1: admitted, or granted by a release earlier (rule: a prediction
        starts when its waiter learns of its slot)."""
        now = self.now()
        proc.waiters.pop(lease_id, None)
        proc.grants.pop(lease_id, None)  # a grant message still on its way is stale
        self.renamed.pop(lease_id, None)  # a waiter id adopted once, admitted afresh
        pin = now + pin_ms if pin_ms else 0
        pinned = self.h.client.zscore(self.h.keys.pins, lease_id)
        assert pinned == (pin or None), f"{lease_id} acquired with pin {pin}, pins say {pinned}"
        lease = Lease(lease_id, reply.epoch, reply.expires_at_ms, pin)
        proc.leases[lease_id] = lease
        self.start(proc, lease, lease_id, end, annotate)

    def start(self, proc: Process, lease: Lease, guard: str, end: int, annotate: bool) -> None:
        """A pinned lease's holder creates its prediction, which ends by the pin at the latest."""
        now = self.now()
        if lease.pin_ms <= now:
            return  # unpinned (no prediction), or its deadline passed: the create is aborted
        end_ms = now + max(1, (lease.pin_ms - now) * end // 1000)
        prediction = Prediction(f"p{len(self.predictions)}", end_ms, guard)
        previous = self.guards.get(guard)
        assert previous is None or not previous.running(now), (
            f"{guard} starts a prediction while {previous.name} still runs under it"
        )
        self.predictions.append(prediction)
        self.guards[guard] = prediction
        lease.prediction = prediction
        if annotate:
            self.annotate_lease(proc, lease)

    def annotate_lease(self, proc: Process, lease: Lease) -> None:
        assert lease.prediction is not None
        self.h.annotate(lease.lease_id, self.holder(proc, lease.prediction.name))
        lease.annotated = True

    def read_grants(self) -> None:
        """Hand each grant message to the process it was published for."""
        for channel, data in self.h.drain_published():
            token = channel.rsplit(":", 1)[1]
            words = data.split(" ")
            assert words[0] == "grant", data
            granted_at, epoch = int(words[1]), words[3]
            for item in words[4:]:
                lease_id, expiry = item.rsplit(":", 1)
                assert lease_id.endswith("-" + token) and int(expiry) > granted_at, data
                for proc in self.processes:
                    if proc.token == token:
                        proc.grants[lease_id] = (int(expiry), epoch, granted_at)

    def renew_all(self, proc: Process) -> None:
        leases = list(proc.leases.values())
        if not leases:
            return
        now = self.now()
        reply = self.h.renew([(lease.lease_id, lease.epoch) for lease in leases], ttl_ms=TTL_MS)
        for lease, code in zip(leases, reply.codes, strict=True):
            if code == 1:
                assert lease.lease_id not in self.retired, (
                    f"{lease.lease_id} renewed after it was adopted: one slot, two ids"
                )
                lease.expiry_ms = reply.expires_at_ms
                continue
            assert code in (0, 4), (lease.lease_id, code)
            assert now >= lease.expiry_ms, (
                f"{lease.lease_id} lost (code {code}) although renewed in time: "
                f"now {now}, its expiry {lease.expiry_ms}"
            )
            del proc.leases[lease.lease_id]
            if lease.prediction is not None and proc.cancel_on_loss:
                lease.prediction.cancel(now)

    def adopt_orphans(self, proc: Process, count: int) -> None:
        new_ids = [self.new_id(proc) for _ in range(count)]
        reply = self.h.adopt(new_ids, ttl_ms=TTL_MS)
        now, epoch = reply.now_ms, reply.epoch
        # Whole claims (the reply parses in fives), no more than asked for.
        assert len(reply.claimed) <= count, reply
        redis = Snapshot.read(self.h)
        holders, pinned, info, orphans = redis.holders, redis.pins, redis.info, redis.orphans
        for i, claim in enumerate(reply.claimed):
            new, old = claim.lease_id, claim.previous_lease_id
            record, pin = claim.record, claim.pin_ms
            assert new == new_ids[i] and pin > now
            for name, ids in (("holders", holders), ("pins", pinned), ("info", info)):
                assert old not in ids, f"adopted {old} still in {name}: one slot, two ids"
            assert old not in orphans, f"adopted {old} still an orphan"
            assert holders.get(new) == now + TTL_MS and pinned.get(new) == pin, (
                f"{old} adopted as {new} until {now + TTL_MS}, pinned until {pin}: "
                f"holders say {holders.get(new)}, pins {pinned.get(new)}"
            )
            guarded = self.guards.get(old)
            named = record.get("prediction_id")
            if named is not None:
                assert guarded is not None and guarded.name == named, (old, record, guarded)
            if guarded is not None:
                assert guarded.end_ms <= pin, f"{old}'s pin {pin} before its prediction's end"
                guarded.guard = new
                self.guards[new] = guarded
            if any(old in other.leases for other in self.processes + self.dead):
                self.retired.add(old)
            self.renamed[old] = new
            lease = Lease(new, epoch, now + TTL_MS, pin, adopted=True)
            lease.prediction = guarded if named is not None else None
            proc.leases[new] = lease

    # -- rules ---------------------------------------------------------------------------------

    @initialize(
        limit=st.integers(min_value=1, max_value=3),
        cancel_on_loss=st.lists(st.booleans(), min_size=PROCESSES, max_size=PROCESSES),
    )
    def create(self, limit: int, cancel_on_loss: list[bool]) -> None:
        self.limit = limit
        assert self.h.create(limit) == 1
        self.processes = [Process(self.new_token(), cancel) for cancel in cancel_on_loss]

    @precondition(lambda self: self.live())
    @rule(
        who=picks,
        pin_ms=pins,
        queue=st.booleans(),
        end=ends,
        annotate=st.booleans(),
        adopt=st.booleans(),
    )
    def acquire(
        self, who: int, pin_ms: int, queue: bool, end: int, annotate: bool, adopt: bool
    ) -> None:
        """A new attempt, queueing or try-once. A reply that reports orphans makes the process
        adopt them (service/orphans.py), or not yet."""
        live = self.live()
        proc = live[who % len(live)]
        lease_id = self.new_id(proc)
        reply = self.acquire_as(proc, lease_id, pin_ms, queue)
        if isinstance(reply, Admitted):
            self.acquired(proc, lease_id, pin_ms, reply, end, annotate)
        elif queue:
            proc.waiters[lease_id] = pin_ms
        if adopt and reply.orphans > 0:
            self.adopt_orphans(proc, reply.orphans)

    @precondition(lambda self: self.waiting())
    @rule(
        index=picks,
        how=st.sampled_from(["poll", "message", "give up"]),
        end=ends,
        annotate=st.booleans(),
        adopt=st.booleans(),
    )
    def wait(self, index: int, how: str, end: int, annotate: bool, adopt: bool) -> None:
        """A waiter polls (acquire_slot again: 1 if a release granted it the slot meanwhile),
        takes its slot from a grant message without asking Redis (however late it reads it:
        service/coordination/semaphore.py), or gives up (a slot granted to it goes on)."""
        waiting = self.waiting()
        proc, lease_id = waiting[index % len(waiting)]
        pin_ms = proc.waiters[lease_id]
        if how == "message" and lease_id in proc.grants:
            expiry, epoch, _granted_at = proc.grants.pop(lease_id)
            del proc.waiters[lease_id]
            learned_at = self.now()  # its pin counts from when its waiter read the message
            if pin_ms:
                # A pinned grant is confirmed by a renewal before it is used, however late the
                # message was read (Semaphores._complete_grant), and that renewal pins it for
                # what the waiter says is left of its pin: lost, the waiter gives up here.
                renewed = done(
                    self.h.calls.renew_leases(
                        "s", ttl_ms=TTL_MS, leases=[LeaseToRenew(lease_id, epoch, "{}", pin_ms)]
                    )
                )
                if renewed.codes[0] not in (1, 2):
                    return
                expiry = renewed.expires_at_ms
            lease = Lease(lease_id, epoch, expiry, learned_at + pin_ms if pin_ms else 0)
            proc.leases[lease_id] = lease
            # Unpinned: granted, then maybe orphaned and adopted before it read the message,
            # its prediction runs under that slot, whatever its id now. Pinned: the renewal
            # confirmed this very id.
            guard = lease_id if pin_ms else self.current(lease_id)
            self.start(proc, lease, guard, end, annotate)
        elif how == "give up":
            del proc.waiters[lease_id]
            proc.grants.pop(lease_id, None)
            self.h.release(lease_id)
            self.read_grants()
        else:
            reply = self.acquire_as(proc, lease_id, pin_ms, queue=True)
            if isinstance(reply, Admitted):
                self.acquired(proc, lease_id, pin_ms, reply, end, annotate)
            if adopt and reply.orphans > 0:
                self.adopt_orphans(proc, reply.orphans)

    def current(self, lease_id: str) -> str:
        """The id a slot is held under now, following adoptions."""
        while lease_id in self.renamed:
            lease_id = self.renamed[lease_id]
        return lease_id

    @precondition(lambda self: self.held())
    @rule(index=picks, annotate=st.booleans())
    def tend(self, index: int, annotate: bool) -> None:
        """A holder's background work: renew all its leases, or name a prediction in its
        lease's record once its create answered (annotate_lease)."""
        held = self.held()
        proc, lease = held[index % len(held)]
        if annotate and not lease.annotated and not lease.adopted and lease.prediction:
            self.annotate_lease(proc, lease)
        else:
            self.renew_all(proc)

    @precondition(lambda self: self.held())
    @rule(index=picks, cancel=st.booleans())
    def release(self, index: int, cancel: bool) -> None:
        """A holder gives its slot back once its prediction is terminal (ended, or cancelled
        first); an adopter once Replicate says the adopted one is (rule 3): an unnamed one is
        looked for among the account's predictions (never cancelled then), or, found nowhere,
        held until its pin (its create may still land until then)."""
        held = self.held()
        proc, lease = held[index % len(held)]
        now = self.now()
        prediction = lease.prediction
        if lease.adopted and prediction is None:
            found = self.guards.get(lease.lease_id)
            if found is None and now < lease.pin_ms:
                return
            if found is not None and found.running(now):
                return
        elif prediction is not None and prediction.running(now):
            if not cancel:
                return
            prediction.cancel(now)
        self.h.release(lease.lease_id)
        self.read_grants()
        del proc.leases[lease.lease_id]

    def orphans_maybe(self) -> bool:
        """Orphans, or pinned leases expired that a purge would make orphans."""
        if self.redis.orphans:
            return True
        now = self.now()
        return any(
            expiry <= now < self.redis.pins.get(lease_id, 0)
            for lease_id, expiry in self.redis.holders.items()
        )

    @precondition(lambda self: self.live() and self.orphans_maybe())
    @rule(who=picks, count=st.integers(min_value=1, max_value=3))
    def adopt(self, who: int, count: int) -> None:
        """A process adopts orphans unprompted (as after a reply that reported some)."""
        live = self.live()
        self.adopt_orphans(live[who % len(live)], count)

    @rule(
        index=picks,
        how=st.sampled_from(["abandon", "freeze", "resume", "die"]),
        flag=st.booleans(),
    )
    def trouble(self, index: int, how: str, flag: bool) -> None:
        """Rule 4: a holder that cannot know whether its prediction ended abandons its lease
        (stops renewing it); a freeze; the end of one (its lease watchdog renews at once); a
        SIGKILL: its predictions run on until their end, nothing of it renews any more, and a
        new process (which knows nothing of the dead one's leases) takes its place."""
        able = {"abandon": "alive", "freeze": "alive", "resume": "frozen", "die": "alive frozen"}
        candidates = [p for p in self.processes if p.state in able[how].split()]
        if how == "abandon":
            candidates = [p for p in candidates if p.leases]
        if not candidates:
            return
        proc = candidates[index % len(candidates)]
        if how == "abandon":
            leases = list(proc.leases)
            del proc.leases[leases[index % len(leases)]]
        elif how == "freeze":
            proc.state = "frozen"
        elif how == "resume":
            proc.state = "alive"
            self.renew_all(proc)
        else:
            proc.state = "dead"
            self.dead.append(proc)
            self.processes[self.processes.index(proc)] = Process(self.new_token(), flag)

    @rule(
        how=st.sampled_from(["small", "large", "event"]),
        ms=st.integers(min_value=1, max_value=30_000),
        index=picks,
        offset=st.sampled_from([-1, 0, 1]),
    )
    def advance(self, how: str, ms: int, index: int, offset: int) -> None:
        """Time passes: a small step (up to 1.5 s), a large one (up to 30 s), or to just
        before, at or just after the next moment something expires, or a prediction ends."""
        now = self.now()
        if how == "small":
            to = now + 1 + ms % 1500
        elif how == "large":
            to = now + ms
        else:
            events = sorted(t for t in self.events() if t + offset > now)
            if not events:
                return
            to = events[index % len(events)] + offset
        self.h.clock.now = START_S + (to - START_MS) / 1000
        assert self.now() == to

    def events(self) -> set[int]:
        out: set[int] = set()
        redis = Snapshot.read(self.h)
        for scores in (redis.holders, redis.pins, redis.qexp):
            out.update(scores.values())
        for proc in self.processes:
            out.update(lease.expiry_ms for lease in proc.leases.values())
        out.update(p.end_ms for p in self.predictions)
        return out

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def slot_ownership(self) -> None:
        if not self.processes:
            return
        now = self.now()
        running = [p for p in self.predictions if p.running(now)]
        assert len(running) <= self.limit, (
            f"{len(running)} predictions may be running, limit {self.limit}: "
            + ", ".join(f"{p.name} (slot {p.guard}, ends {p.end_ms})" for p in running)
        )
        self.redis = redis = Snapshot.read(self.h)
        holders, pinned, orphans, info = redis.holders, redis.pins, redis.orphans, redis.info
        assert len(holders) <= self.limit, holders
        for p in running:
            assert p.guard in holders, f"{p.name} runs until {p.end_ms}, its slot {p.guard} is free"
            assert pinned.get(p.guard, 0) >= p.end_ms, (
                f"{p.guard} pinned until {pinned.get(p.guard)}, before {p.name} ends {p.end_ms}"
            )
        for orphan in orphans:
            assert orphan in holders and orphan in pinned, f"orphan {orphan} not held and pinned"
        for retired in self.retired:
            assert retired not in holders and retired not in pinned and retired not in info
        for proc in self.processes + self.dead:
            for lease in proc.leases.values():
                if lease.expiry_ms > now:
                    assert lease.lease_id in holders and lease.lease_id not in orphans, (
                        f"{lease.lease_id} taken from {proc.token} ({proc.state}) before its "
                        f"expiry {lease.expiry_ms} (now {now})"
                    )


@pytest.fixture
def model_harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    clock = FakeClock(START_S)
    redis_clock(monkeypatch, clock)
    harness = Harness(clock)
    yield harness
    harness.pubsub.close()


# About 10 s when it passes. A failure is shrunk for up to 5 minutes (hypothesis' own cap) into
# a short sequence of steps worth reading; the example database replays it at once next time.
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slot_ownership_model(model_harness: Harness) -> None:
    run_state_machine_as_test(
        lambda: SlotOwnershipModel(model_harness),
        settings=settings(
            max_examples=200,
            stateful_step_count=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# -- faults the model found (its sequences, shrunk by hypothesis, no-op steps left out) -------


def replay(harness: Harness, limit: int, *steps: tuple[str, dict[str, Any]]) -> None:
    """Run `steps` (rule name, arguments) and check the invariants after each, as hypothesis
    does."""
    model = SlotOwnershipModel(harness)
    model.create(limit=limit, cancel_on_loss=[False] * PROCESSES)
    model.slot_ownership()
    for name, arguments in steps:
        getattr(model, name)(**arguments)
        model.slot_ownership()


def acquire(pin_ms: int, end: int = 1000, queue: bool = False) -> tuple[str, dict[str, Any]]:
    """The first live process takes a slot, pinned for `pin_ms`; its prediction ends `end`
    thousandths of the way to the pin."""
    arguments = {"who": 0, "pin_ms": pin_ms, "queue": queue, "end": end}
    return "acquire", {**arguments, "annotate": False, "adopt": False}


def after(ms: int) -> tuple[str, dict[str, Any]]:
    return "advance", {"how": "large", "ms": ms, "index": 0, "offset": 0}


ADOPT = ("adopt", {"who": 0, "count": 1})


def test_an_adopted_slot_stays_taken_while_its_adopter_is_silent(model_harness: Harness) -> None:
    """The adopted lease replaces the orphan, the holders set's only member: Redis deletes the
    emptied set, and adopt_orphans created it anew with a TTL of 3 lease TTLs only. Its adopter
    dies before settling it (or freezes), nothing touches the semaphore for 3 TTLs: the holders
    key expired, and the slot with it, while p0 runs until its pin."""
    replay(model_harness, 1, acquire(pin_ms=4262, end=939), after(1000), ADOPT, after(3001))


def test_an_adopted_lease_keeps_its_pin_when_a_shorter_one_is_taken(
    model_harness: Harness,
) -> None:
    """Adoption empties the pins set and recreated it without a TTL; the next pinned acquire
    (keep_for) gave it that lease's shorter one: when it ran out, the adopted lease lost its pin
    (and a purge would free it, expired, while p0 runs)."""
    replay(
        model_harness,
        2,
        acquire(pin_ms=8873, end=282),
        ("trouble", {"index": 0, "how": "abandon", "flag": False}),
        after(1000),
        ADOPT,
        acquire(pin_ms=500, end=1),
        after(1501),
    )


def test_a_waiter_that_takes_a_lapsed_grant_is_no_orphan(model_harness: Harness) -> None:
    """A release grants the queued l5 its slot (pinned); l5's next poll comes once that grant
    lapsed: the poll's own purge makes it an orphan, then confirms it to its waiter (status 1,
    a fresh expiry), and left it in orphans: adoptable at once, its holder alive and within its
    expiry (whose renewal would then find it lost, and its prediction cancelled)."""
    replay(
        model_harness,
        1,
        acquire(pin_ms=500, end=1),
        after(2),
        acquire(pin_ms=1001, end=1, queue=True),
        ("release", {"index": 0, "cancel": False}),
        after(1000),
        ("wait", {"index": 0, "how": "poll", "end": 1, "annotate": False, "adopt": False}),
    )


def test_a_renewal_past_the_pin_leaves_no_orphan_behind(model_harness: Harness) -> None:
    """l4 expires and is orphaned (a queued attempt's purge); its holder's renewal comes after
    the pin: renew_leases dropped it from holders, info and pins, not from orphans."""
    replay(
        model_harness,
        1,
        acquire(pin_ms=1001, end=1),
        after(1000),
        acquire(pin_ms=0, queue=True),
        after(2),
        ("tend", {"index": 0, "annotate": False}),
    )
