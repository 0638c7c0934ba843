"""FederatedTraining over the real relay: members in threads of this process, each with its
own SyncClient, trainer and shard of synthetic data."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from helpers.relay_process import SLOWDOWN
from segmentation_suite.network import SyncClient
from segmentation_suite.training import (
    FederatedTraining,
    Trainer,
    TrainingEvent,
    held_out_set,
    member_shard,
)

WAIT = 20 * SLOWDOWN


class Room:
    """A host and members joined in one relay room; everyone disconnects at the end."""

    def __init__(self, url: str, members: int, aggregation_timeout: float = 60.0):
        self.clients: list[SyncClient] = []
        self.host = self._client(aggregation_timeout)
        created = threading.Event()
        codes: list[str] = []
        self.host.room_created.connect(lambda code: (codes.append(code), created.set()))
        self.host.create_relay_room("host", url)
        assert created.wait(WAIT), "no room created"
        self.members = []
        for i in range(members):
            member = self._client(aggregation_timeout)
            member.connect_relay(codes[0].lower(), f"member{i}", url)
            self.members.append(member)
        deadline = time.monotonic() + WAIT
        everyone = 1 + members
        while not all(len(c.users) == everyone and c.is_connected for c in self.clients):
            assert time.monotonic() < deadline, [c.users for c in self.clients]
            time.sleep(0.05)

    def _client(self, aggregation_timeout: float) -> SyncClient:
        client = SyncClient(aggregation_timeout=aggregation_timeout, reconnect_attempts=0)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()


@pytest.fixture
def room_factory(relay):
    process = relay()
    rooms: list[Room] = []

    def make(members: int, **options) -> Room:
        room = Room(process.url, members, **options)
        rooms.append(room)
        return room

    yield make
    for room in rooms:
        room.close()


def run_in_thread(training: FederatedTraining, stop=None, on_event=None):
    """Starts training.run on a thread; returns (thread, results, events)."""
    results: list = []
    events: list[TrainingEvent] = []

    def record(event: TrainingEvent) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    thread = threading.Thread(
        target=lambda: results.extend(training.run(on_event=record, stop=stop)), daemon=True
    )
    thread.start()
    return thread, results, events


def test_host_and_member_train_two_rounds_and_end_with_the_same_global_model(room_factory):
    room = room_factory(members=1)
    member = room.members[0]
    evaluation = held_out_set(6, size=32)
    host_trainer = Trainer(member_shard(0, 8, size=32), seed=0, batch_size=4)
    member_trainer = Trainer(member_shard(1, 12, size=32), seed=1, batch_size=4)

    host_run = FederatedTraining(
        room.host,
        host_trainer,
        rounds=2,
        epochs_per_round=1,
        round_timeout=WAIT,
        evaluation=evaluation,
    )
    member_run = FederatedTraining(
        member,
        member_trainer,
        rounds=2,
        epochs_per_round=2,
        round_timeout=WAIT,
        evaluation=evaluation,
    )
    host_thread, host_results, host_events = run_in_thread(host_run)
    member_thread, member_results, member_events = run_in_thread(member_run)
    host_thread.join(3 * WAIT)
    member_thread.join(3 * WAIT)
    assert not host_thread.is_alive() and not member_thread.is_alive()

    for results in (host_results, member_results):
        assert [r.round for r in results] == [1, 2]
        assert all(r.global_dice is not None and 0.0 <= r.global_dice <= 1.0 for r in results)
        assert all(r.global_loss is not None and r.global_loss > 0 for r in results)
        assert all(0.0 <= r.local_dice <= 1.0 and r.seconds > 0 for r in results)
    assert [r.contributors for r in host_results] == [2, 2]  # the host saw both pushes

    # Both hold the global model of round 2, bit for bit.
    host_weights, member_weights = host_trainer.state_dict(), member_trainer.state_dict()
    for key, value in host_weights.items():
        assert torch.equal(value, member_weights[key]), key

    # The events a UI draws from, in order within each round.
    kinds = [e.kind for e in member_events if e.kind != "batch"]
    assert kinds == ["epoch", "epoch", "upload", "waiting", "download", "round"] * 2
    batches = [e for e in member_events if e.kind == "batch"]
    assert len(batches) == 2 * 2 * 3  # rounds x epochs x ceil(12 / 4)
    assert (batches[0].batch, batches[0].batches, batches[0].epochs) == (1, 3, 2)
    uploads = [e for e in member_events + host_events if e.kind == "upload"]
    assert all(e.bytes > 1000 and e.seconds >= 0 for e in uploads)
    rounds = [e for e in host_events if e.kind == "round"]
    assert [e.result for e in rounds] == host_results
    assert not [e for e in host_events if "closed before" in e.message]


def test_a_slower_host_still_gets_its_weights_into_every_round(room_factory):
    room = room_factory(members=1)
    host, member = room.host, room.members[0]
    member_pushes = threading.Semaphore(0)
    host.weights_received.connect(
        lambda user_id, info: member_pushes.release() if user_id == member.user_id else None,
        thread=None,
    )

    def host_pushes_last(event: TrainingEvent) -> None:
        if event.kind == "epoch":
            assert member_pushes.acquire(timeout=WAIT), "the member never pushed"
            time.sleep(0.3)  # the round would have closed by now without host_trains

    host_trainer = Trainer(member_shard(0, 4, size=32))
    member_trainer = Trainer(member_shard(1, 4, size=32))
    host_run = FederatedTraining(host, host_trainer, rounds=2, round_timeout=WAIT)
    member_run = FederatedTraining(member, member_trainer, rounds=2, round_timeout=WAIT)
    host_thread, host_results, host_events = run_in_thread(host_run, on_event=host_pushes_last)
    member_thread, member_results, _ = run_in_thread(member_run)
    host_thread.join(3 * WAIT)
    member_thread.join(3 * WAIT)
    assert [r.contributors for r in host_results] == [2, 2]
    assert [r.global_dice is not None for r in member_results] == [True, True]
    assert not [e for e in host_events if "closed before" in e.message]
    for key, value in host_trainer.state_dict().items():
        assert torch.equal(value, member_trainer.state_dict()[key]), key
    assert host.host_trains is False  # restored after the run


def test_the_host_is_told_when_a_round_closed_without_its_weights(room_factory):
    # aggregation_timeout closes round 1 on the member's push alone while the host trains.
    room = room_factory(members=1, aggregation_timeout=1)
    host, member = room.host, room.members[0]
    closed = threading.Event()
    host.round_complete.connect(lambda *args: closed.set(), thread=None)

    def host_trains_past_the_timeout(event: TrainingEvent) -> None:
        if event.kind == "epoch" and event.round == 1:
            assert closed.wait(WAIT), "round 1 never closed"

    data = member_shard(0, 4, size=32)
    host_run = FederatedTraining(host, Trainer(data), rounds=2, round_timeout=WAIT)
    member_run = FederatedTraining(member, Trainer(data), rounds=1, round_timeout=WAIT)
    host_thread, host_results, host_events = run_in_thread(
        host_run, on_event=host_trains_past_the_timeout
    )
    member_thread, member_results, _ = run_in_thread(member_run)
    host_thread.join(3 * WAIT)
    member_thread.join(3 * WAIT)
    assert len(host_results) == 2 and len(member_results) == 1
    notes = [e.round for e in host_events if "closed before the host's weights" in e.message]
    assert notes == [1]
    # its round-1 push went into a round of its own, closed by the timeout again
    assert host_results[0].contributors == 1 and host_results[0].global_dice is not None
    # the member reads from the model that it averages one push (its own), not the room's two
    assert member_results[0].contributors == 1


def test_a_host_alone_finishes_each_round_on_its_own_push_and_stop_ends_early(room_factory):
    room = room_factory(members=0)
    trainer = Trainer(member_shard(0, 8, size=32), batch_size=4)
    stop = threading.Event()

    def stop_after_first_round(event: TrainingEvent) -> None:
        if event.kind == "round":
            stop.set()

    training = FederatedTraining(room.host, trainer, rounds=5, round_timeout=WAIT)
    thread, results, events = run_in_thread(training, stop=stop, on_event=stop_after_first_round)
    thread.join(2 * WAIT)
    assert not thread.is_alive()
    assert [r.round for r in results] == [1]
    assert results[0].global_dice is not None and results[0].contributors == 1
    assert events[-1].kind == "stopped" and events[-1].round == 2
    assert not [e for e in events if e.kind == "batch" and e.round == 2]


def test_a_missing_global_model_keeps_the_local_weights_and_stop_ends_a_wait(room_factory):
    # Two members: the idle one never pushes, so the host's round stays open.
    room = room_factory(members=2, aggregation_timeout=600)
    member = room.members[0]
    trainer = Trainer(member_shard(1, 8, size=32), batch_size=4)
    training = FederatedTraining(member, trainer, rounds=1, round_timeout=1.0)
    thread, results, events = run_in_thread(training)
    thread.join(WAIT)
    assert not thread.is_alive()
    (result,) = results
    assert result.global_dice is None and result.contributors == 0
    assert result.global_loss is None
    assert any(e.kind == "waiting" and "No global model" in e.message for e in events)
    # nothing lost: the model is the one trained locally
    assert trainer.evaluate(trainer.data) == pytest.approx(result.local_dice)

    stop = threading.Event()
    second = FederatedTraining(member, trainer, rounds=3, round_timeout=600)

    def stop_while_waiting(event: TrainingEvent) -> None:
        if event.kind == "waiting":
            stop.set()

    started = time.monotonic()
    thread, results, events = run_in_thread(second, stop=stop, on_event=stop_while_waiting)
    thread.join(WAIT)
    assert not thread.is_alive() and time.monotonic() - started < WAIT
    assert results == [] and events[-1].kind == "stopped"


def test_a_disconnected_client_keeps_training_locally(room_factory):
    room = room_factory(members=1)
    member = room.members[0]
    member.disconnect()
    errors: list[str] = []
    member.error.connect(errors.append, thread=None)
    trainer = Trainer(member_shard(2, 8, size=32), batch_size=4)
    events: list[TrainingEvent] = []
    started = time.monotonic()
    results = FederatedTraining(member, trainer, rounds=2, round_timeout=WAIT).run(events.append)
    assert time.monotonic() - started < WAIT  # no waiting for a model that cannot come
    assert [r.global_dice for r in results] == [None, None]
    assert trainer.epochs_trained == 2
    assert errors == ["Cannot send weights: not connected to a session"] * 2
    notes = [e.message for e in events if e.kind == "waiting"]
    assert len(notes) == 2 and all("not connected" in note for note in notes)


def test_a_run_started_later_numbers_its_rounds_as_the_session_does(room_factory):
    """first_round: a Resume or a member joining mid-session counts on from the session's
    rounds; events, results and the pushes' round field all carry that number."""
    room = room_factory(members=1)
    pushes: list = []
    room.host.weights_received.connect(lambda user, info: pushes.append(info["epoch"]))
    runs = [
        FederatedTraining(
            client,
            Trainer(member_shard(style, 8, size=32), seed=style, batch_size=4),
            rounds=2,
            round_timeout=WAIT,
            first_round=4,
        )
        for style, client in enumerate((room.host, room.members[0]))
    ]
    threads = [run_in_thread(run) for run in runs]
    for thread, _, _ in threads:
        thread.join(3 * WAIT)
        assert not thread.is_alive()
    for _, results, events in threads:
        assert [r.round for r in results] == [4, 5]
        assert {(e.round, e.rounds) for e in events if e.kind == "epoch"} == {(4, 5), (5, 5)}
    assert sorted(pushes) == [4, 4, 5, 5]
    with pytest.raises(ValueError, match="first_round"):
        FederatedTraining(room.host, runs[0].trainer, first_round=0)
