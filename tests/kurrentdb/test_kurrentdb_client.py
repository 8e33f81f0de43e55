"""KurrentDB's official Python client (kurrentdbclient) against Skald's gRPC
front end. Run by tests/it/kurrentdb.rs, which starts `skald serve
--grpc-listen` and passes its address in SKALD_GRPC; each test uses streams
of its own, so the order of the tests does not matter."""

import os
import unittest
import uuid
from datetime import datetime, timedelta, timezone

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.events import CaughtUp, Checkpoint
from kurrentdbclient.exceptions import (
    BadRequestError,
    FailedPreconditionError,
    GrpcError,
    NotFoundError,
    StreamIsDeletedError,
    WrongCurrentVersionError,
)

URI = f"kurrentdb://{os.environ['SKALD_GRPC']}?tls=false"


def stream(prefix="order"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def event(type_="OrderPlaced", data=b'{"total": 30}', metadata=b"", id_=None):
    return NewEvent(type=type_, data=data, metadata=metadata, id=id_ or uuid.uuid4())


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.client = KurrentDBClient(uri=URI)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()


class AppendTest(ClientTest):
    def test_expected_revisions_any_no_stream_exists_exact(self):
        s = stream()
        c = self.client
        first = c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event()])
        c.append_to_stream(s, current_version=0, events=[event()])
        c.append_to_stream(s, current_version=StreamState.EXISTS, events=[event()])
        last = c.append_to_stream(s, current_version=StreamState.ANY, events=[event()])
        self.assertGreater(last, first)
        self.assertEqual(c.get_current_version(s), 3)
        self.assertEqual([e.stream_position for e in c.get_stream(s)], [0, 1, 2, 3])

    def test_wrong_expected_version_names_the_current_and_expected_revisions(self):
        s = stream()
        c = self.client
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event(), event()])
        with self.assertRaises(WrongCurrentVersionError) as caught:
            c.append_to_stream(s, current_version=0, events=[event()])
        self.assertEqual(caught.exception.actual_version, 1)
        self.assertEqual(caught.exception.expected_version, 0)
        with self.assertRaises(WrongCurrentVersionError) as caught:
            c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event()])
        self.assertEqual(caught.exception.actual_version, 1)
        missing = stream()
        with self.assertRaises(WrongCurrentVersionError) as caught:
            c.append_to_stream(missing, current_version=StreamState.EXISTS, events=[event()])
        self.assertEqual(caught.exception.actual_version, StreamState.NO_STREAM)
        with self.assertRaises(WrongCurrentVersionError) as caught:
            c.append_to_stream(missing, current_version=5, events=[event()])
        self.assertEqual(caught.exception.actual_version, StreamState.NO_STREAM)
        # Nothing of a refused append was written.
        self.assertEqual(c.get_current_version(s), 1)
        self.assertEqual(c.get_current_version(missing), StreamState.NO_STREAM)

    def test_reappending_the_same_event_ids_returns_the_original_result(self):
        s = stream()
        c = self.client
        events = [event(), event("ItemAdded", b'{"sku": "A-1"}')]
        original = c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=events)
        replayed = c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=events)
        self.assertEqual(replayed, original)
        self.assertEqual(len(c.get_stream(s)), 2)

    def test_event_fields_round_trip(self):
        s = stream()
        c = self.client
        id_ = uuid.uuid4()
        before = datetime.now(timezone.utc) - timedelta(seconds=5)
        c.append_to_stream(
            s,
            current_version=StreamState.NO_STREAM,
            events=[event("ItemAdded", b'{"sku": "A-1", "n": [1, 2]}', b'{"user": "ann"}', id_)],
        )
        (got,) = c.get_stream(s)
        self.assertEqual(got.id, id_)
        self.assertEqual(got.type, "ItemAdded")
        self.assertEqual(got.stream_name, s)
        self.assertEqual(got.content_type, "application/json")
        self.assertEqual(got.data, b'{"sku": "A-1", "n": [1, 2]}')
        self.assertEqual(got.metadata, b'{"user": "ann"}')
        self.assertEqual(got.commit_position, got.prepare_position)
        self.assertIsNotNone(got.recorded_at)
        self.assertGreater(got.recorded_at, before)
        self.assertLess(got.recorded_at, datetime.now(timezone.utc) + timedelta(seconds=5))

    def test_binary_payloads_round_trip_byte_for_byte(self):
        s = stream()
        c = self.client
        blobs = [bytes(range(256)), b"", b"\xff\xfe not UTF-8 \x00", b'{"looks": "like JSON"}']
        events = [
            NewEvent(type="Blob", data=blob, content_type="application/octet-stream")
            for blob in blobs
        ]
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=events)
        got = c.get_stream(s)
        self.assertEqual([e.data for e in got], blobs)
        self.assertEqual({e.content_type for e in got}, {"application/octet-stream"})
        # Through $all and a subscription too.
        position = got[0].commit_position
        from_all = c.read_all(commit_position=position, limit=4)
        self.assertEqual([e.data for e in from_all], blobs)
        subscription = c.subscribe_to_stream(s, timeout=30)
        self.assertEqual([next(subscription).data for _ in blobs], blobs)
        subscription.stop()

    def test_payloads_skald_cannot_keep_are_refused_and_nothing_is_written(self):
        s = stream()
        c = self.client
        text = NewEvent(type="Note", data=b"hello", content_type="text/plain")
        with self.assertRaises(BadRequestError) as caught:
            c.append_to_stream(s, current_version=StreamState.ANY, events=[event(), text])
        self.assertIn("application/octet-stream", str(caught.exception))
        with self.assertRaises(BadRequestError) as caught:
            c.append_to_stream(s, current_version=StreamState.ANY, events=[event(data=b"not json")])
        self.assertIn("not JSON", str(caught.exception))
        self.assertEqual(c.get_current_version(s), StreamState.NO_STREAM)


class ReadTest(ClientTest):
    def test_stream_reads_forward_backward_from_a_revision_and_limited(self):
        s = stream()
        c = self.client
        c.append_to_stream(
            s,
            current_version=StreamState.NO_STREAM,
            events=[event(data=b'{"n": %d}' % i) for i in range(7)],
        )
        self.assertEqual([e.stream_position for e in c.get_stream(s)], list(range(7)))
        self.assertEqual(
            [e.stream_position for e in c.get_stream(s, backwards=True)], list(range(6, -1, -1))
        )
        self.assertEqual([e.stream_position for e in c.get_stream(s, stream_position=4)], [4, 5, 6])
        self.assertEqual(
            [e.stream_position for e in c.get_stream(s, stream_position=4, backwards=True, limit=2)],
            [4, 3],
        )
        self.assertEqual([e.stream_position for e in c.get_stream(s, limit=3)], [0, 1, 2])

    def test_a_stream_never_written_is_not_found(self):
        with self.assertRaises(NotFoundError):
            self.client.get_stream(stream())

    def test_all_forward_backward_and_from_a_position_inclusive(self):
        s = stream()
        c = self.client
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event() for _ in range(3)])
        mine = [e for e in c.read_all() if e.stream_name == s]
        self.assertEqual([e.stream_position for e in mine], [0, 1, 2])
        positions = [e.commit_position for e in mine]
        self.assertEqual(positions, sorted(positions))
        from_second = list(c.read_all(commit_position=positions[1], limit=2))
        self.assertEqual([e.commit_position for e in from_second], positions[1:3])
        newest = list(c.read_all(backwards=True, limit=1))
        self.assertEqual(newest[0].commit_position, c.get_commit_position())

    def test_all_filters_by_stream_prefix_and_event_type_regex(self):
        tag = uuid.uuid4().hex[:8]
        c = self.client
        c.append_to_stream(f"alpha{tag}-1", current_version=StreamState.ANY, events=[event("Alpha")])
        c.append_to_stream(f"beta{tag}-1", current_version=StreamState.ANY, events=[event("Beta")])
        c.append_to_stream(f"alpha{tag}-2", current_version=StreamState.ANY, events=[event("Gamma")])
        by_prefix = c.read_all(filter_include=[f"alpha{tag}"], filter_by_stream_name=True, filter_by_prefix=True)
        self.assertEqual(sorted(e.stream_name for e in by_prefix), [f"alpha{tag}-1", f"alpha{tag}-2"])
        by_regex = [
            e for e in c.read_all(filter_include=["Alpha|Beta"]) if e.stream_name.endswith(f"{tag}-1")
        ]
        self.assertEqual(sorted(e.type for e in by_regex), ["Alpha", "Beta"])
        # The default exclude filter is a negative lookahead on event types.
        excluded = [
            e for e in c.read_all(filter_exclude=["Gamma"]) if tag in e.stream_name
        ]
        self.assertEqual(sorted(e.type for e in excluded), ["Alpha", "Beta"])


class DeleteTest(ClientTest):
    def test_soft_delete_then_reads_are_not_found_and_appends_continue_revisions(self):
        s = stream()
        c = self.client
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event(), event()])
        c.delete_stream(s, current_version=1)
        with self.assertRaises(NotFoundError):
            c.get_stream(s)
        c.append_to_stream(s, current_version=StreamState.ANY, events=[event()])
        self.assertEqual([e.stream_position for e in c.get_stream(s)], [2])

    def test_delete_with_a_wrong_expected_version(self):
        s = stream()
        c = self.client
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event(), event()])
        with self.assertRaises(WrongCurrentVersionError) as caught:
            c.delete_stream(s, current_version=0)
        self.assertEqual(caught.exception.actual_version, 1)
        with self.assertRaises(NotFoundError):
            c.delete_stream(stream(), current_version=0)
        self.assertEqual(c.get_current_version(s), 1)

    def test_tombstone_refuses_reads_and_appends_for_good(self):
        s = stream()
        c = self.client
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event()])
        c.tombstone_stream(s, current_version=StreamState.ANY)
        with self.assertRaises(StreamIsDeletedError):
            c.get_stream(s)
        with self.assertRaises(StreamIsDeletedError):
            c.append_to_stream(s, current_version=StreamState.ANY, events=[event()])


class MetadataTest(ClientTest):
    def test_metadata_is_read_and_written_as_the_metadata_stream_with_versions(self):
        s = stream()
        c = self.client
        self.assertEqual(c.get_stream_metadata(s), ({}, StreamState.NO_STREAM))
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event() for _ in range(5)])
        wanted = {"$maxCount": 2, "$maxAge": 3600, "owner": "billing", "tags": ["a", "b"]}
        c.set_stream_metadata(s, metadata=wanted, current_version=StreamState.NO_STREAM)
        metadata, version = c.get_stream_metadata(s)
        self.assertEqual((metadata, version), (wanted, 0))
        # $maxCount is Skald's max_count: only the newest two events are visible.
        self.assertEqual([e.stream_position for e in c.get_stream(s)], [3, 4])
        # The version is checked like a stream's revision.
        with self.assertRaises(WrongCurrentVersionError):
            c.set_stream_metadata(s, metadata={"$tb": 4}, current_version=StreamState.NO_STREAM)
        with self.assertRaises(WrongCurrentVersionError):
            c.set_stream_metadata(s, metadata={"$tb": 4}, current_version=5)
        c.set_stream_metadata(s, metadata={"$tb": 4}, current_version=0)
        self.assertEqual(c.get_stream_metadata(s), ({"$tb": 4}, 1))
        self.assertEqual([e.stream_position for e in c.get_stream(s)], [4])
        c.set_stream_metadata(s, metadata={})
        self.assertEqual(c.get_stream_metadata(s), ({}, 2))
        self.assertEqual([e.stream_position for e in c.get_stream(s)], [0, 1, 2, 3, 4])

    def test_the_metadata_stream_reads_as_one_metadata_event(self):
        s = stream()
        c = self.client
        c.set_stream_metadata(s, metadata={"$maxCount": 7})
        c.set_stream_metadata(s, metadata={"$maxCount": 8})
        events = c.get_stream(f"$${s}")
        self.assertEqual(len(events), 1)
        e = events[0]
        self.assertEqual((e.type, e.stream_name, e.stream_position), ("$metadata", f"$${s}", 1))
        self.assertEqual(e.content_type, "application/json")
        self.assertEqual(c.get_stream(f"$${s}", stream_position=2), ())
        self.assertEqual(c.get_stream(f"$${s}", backwards=True, limit=1)[0].id, e.id)
        # Metadata can be set before the stream's first event.
        with self.assertRaises(NotFoundError):
            c.get_stream(s)

    def test_metadata_skald_cannot_keep_is_refused(self):
        s = stream()
        c = self.client
        for bad in ({"$maxCount": 0}, {"$maxAge": "1h"}, {"$acl": {"$r": "$all"}}):
            with self.assertRaises(GrpcError, msg=str(bad)):
                c.set_stream_metadata(s, metadata=bad)
        with self.assertRaises(BadRequestError):
            c.append_to_stream(f"$${s}", current_version=StreamState.ANY, events=[event()])
        self.assertEqual(c.get_stream_metadata(s), ({}, StreamState.NO_STREAM))

    def test_a_tombstoned_stream_has_no_metadata_to_read_or_write(self):
        s = stream()
        c = self.client
        c.set_stream_metadata(s, metadata={"$maxCount": 3})
        c.append_to_stream(s, current_version=StreamState.ANY, events=[event()])
        c.tombstone_stream(s, current_version=StreamState.ANY)
        with self.assertRaises(StreamIsDeletedError):
            c.get_stream_metadata(s)
        # An Append answered with the stream-deleted status: this client raises
        # it as FailedPreconditionError (it does for KurrentDB too).
        with self.assertRaises(FailedPreconditionError) as caught:
            c.set_stream_metadata(s, metadata={})
        self.assertIn("is deleted", str(caught.exception))


class SubscriptionTest(ClientTest):
    def test_stream_subscription_catches_up_then_goes_live(self):
        s = stream()
        c = self.client
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event() for _ in range(3)])
        seen = []
        with c.subscribe_to_stream(s, include_caught_up=True, timeout=30) as sub:
            for item in sub:
                if isinstance(item, CaughtUp):
                    seen.append("caught_up")
                    self.assertEqual(item.stream_position, 2)
                    c.append_to_stream(s, current_version=2, events=[event("Live")])
                    continue
                seen.append((item.stream_position, item.type))
                if item.type == "Live":
                    break
        self.assertEqual(
            seen,
            [(0, "OrderPlaced"), (1, "OrderPlaced"), (2, "OrderPlaced"), "caught_up", (3, "Live")],
        )

    def test_subscribing_from_a_revision_or_position_excludes_it(self):
        s = stream()
        c = self.client
        c.append_to_stream(s, current_version=StreamState.NO_STREAM, events=[event() for _ in range(4)])
        with c.subscribe_to_stream(s, stream_position=1, timeout=30) as sub:
            self.assertEqual([next(sub).stream_position for _ in range(2)], [2, 3])
        events = c.get_stream(s)
        with c.subscribe_to_all(commit_position=events[1].commit_position, timeout=30) as sub:
            got = next(item for item in sub if item.stream_name == s)
            self.assertEqual(got.commit_position, events[2].commit_position)

    def test_filtered_all_subscription_checkpoints_and_catches_up_when_nothing_matches(self):
        c = self.client
        c.append_to_stream(stream(), current_version=StreamState.ANY, events=[event() for _ in range(5)])
        head = c.get_commit_position()
        kinds = []
        with c.subscribe_to_all(
            filter_include=["NoSuchType" + uuid.uuid4().hex],
            include_checkpoints=True,
            include_caught_up=True,
            window_size=2,
            checkpoint_interval_multiplier=1,
            timeout=30,
        ) as sub:
            for item in sub:
                if isinstance(item, CaughtUp):
                    kinds.append("caught_up")
                    self.assertEqual(item.commit_position, head)
                    break
                self.assertIsInstance(item, Checkpoint)
                kinds.append("checkpoint")
        self.assertEqual(kinds[-1], "caught_up")
        # At least one checkpoint per two examined events that did not match.
        self.assertGreaterEqual(kinds.count("checkpoint"), 2)

    def test_all_subscription_with_a_filter_delivers_matching_live_events(self):
        tag = uuid.uuid4().hex[:8]
        c = self.client
        with c.subscribe_to_all(
            filter_include=[f"live{tag}"],
            filter_by_stream_name=True,
            filter_by_prefix=True,
            from_end=True,
            timeout=30,
        ) as sub:
            c.append_to_stream(f"other{tag}", current_version=StreamState.ANY, events=[event("Skipped")])
            c.append_to_stream(f"live{tag}-1", current_version=StreamState.ANY, events=[event("Wanted")])
            got = next(sub)
            self.assertEqual((got.stream_name, got.type), (f"live{tag}-1", "Wanted"))


class ServerTest(ClientTest):
    def test_gossip_names_this_node_as_the_leader(self):
        members = self.client.read_gossip()
        self.assertEqual(len(members), 1)
        self.assertEqual(members[0].state, "NODE_STATE_LEADER")
        host, port = os.environ["SKALD_GRPC"].rsplit(":", 1)
        self.assertEqual((members[0].address, members[0].port), (host, int(port)))

    def test_persistent_subscriptions_list_none_and_the_rest_is_unimplemented(self):
        c = self.client
        self.assertEqual(c.list_subscriptions(), [])
        self.assertEqual(c.list_subscriptions_to_stream(stream()), [])
        with self.assertRaises(GrpcError) as caught:
            c.create_subscription_to_all(group_name="g")
        self.assertIn("UNIMPLEMENTED", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
