//! KurrentDB's official Rust client (the `kurrentdb` crate) against
//! `skald serve --grpc-listen`: the core scenario of an application written
//! for KurrentDB, unchanged but for its connection string. Appends with each
//! kind of expected revision and the wrong-expected-version error, reads of a
//! stream forward and backward, `$all` with a filter, a stream subscription
//! that catches up and goes live, stream metadata, a binary payload, a soft
//! delete and a tombstone with the errors the client raises for them. And
//! the server's pings: a client that reads nothing loses its connection.

use std::time::Duration;

use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, DeleteStreamOptions,
    Error as KurrentError, EventData, ReadAllOptions, ReadStream, ReadStreamOptions,
    StreamMetadata, StreamMetadataResult, StreamPosition, StreamState, SubscribeToStreamOptions,
    SubscriptionFilter, TombstoneStreamOptions,
};
use serde_json::{json, Value};

use crate::support::TestServer;

/// A bound on each call, so a server that never answers fails the test.
const T: Duration = Duration::from_secs(30);

fn client(grpc: &str) -> Client {
    let settings: ClientSettings = format!("kurrentdb://{grpc}?tls=false")
        .parse()
        .expect("connection string");
    Client::new(settings).expect("client")
}

fn placed(n: u64) -> EventData {
    EventData::json("OrderPlaced", &json!({ "n": n })).expect("event")
}

fn expect(state: StreamState) -> AppendToStreamOptions {
    AppendToStreamOptions::default().stream_state(state)
}

/// Every event of a read, as (stream, revision, type, data).
async fn drain(mut read: ReadStream) -> Vec<(String, u64, String, Value)> {
    let mut events = Vec::new();
    while let Some(resolved) = tokio::time::timeout(T, read.next())
        .await
        .expect("the read went quiet")
        .expect("read")
    {
        let e = resolved.get_original_event();
        let data = serde_json::from_slice(&e.data).expect("JSON data");
        events.push((
            e.stream_id().to_owned(),
            e.revision,
            e.event_type.clone(),
            data,
        ));
    }
    events
}

async fn read_stream(c: &Client, stream: &str, options: &ReadStreamOptions) -> Vec<u64> {
    let read = c.read_stream(stream, options).await.expect("read");
    drain(read)
        .await
        .into_iter()
        .map(|(_, r, _, _)| r)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_rust_client_runs_against_skald() {
    let server = TestServer::start_with(&["--grpc-listen", "127.0.0.1:0"]);
    let c = client(&server.grpc.clone().expect("the gRPC address"));

    // Appends: each expectation, and the wrong expected version's details.
    let first = c
        .append_to_stream(
            "order-1",
            &expect(StreamState::NoStream),
            vec![placed(0), placed(1)],
        )
        .await
        .expect("append");
    assert_eq!(first.next_expected_version, 1);
    c.append_to_stream(
        "order-1",
        &expect(StreamState::StreamRevision(1)),
        placed(2),
    )
    .await
    .expect("append at revision 1");
    c.append_to_stream("order-1", &expect(StreamState::StreamExists), placed(3))
        .await
        .expect("append to an existing stream");
    let last = c
        .append_to_stream("order-1", &expect(StreamState::Any), placed(4))
        .await
        .expect("append with any");
    assert_eq!(last.next_expected_version, 4);
    assert!(last.position.commit > first.position.commit);
    match c
        .append_to_stream(
            "order-1",
            &expect(StreamState::StreamRevision(2)),
            placed(9),
        )
        .await
    {
        Err(KurrentError::WrongExpectedVersion { expected, current }) => {
            assert_eq!(expected, StreamState::StreamRevision(2));
            assert_eq!(current, CurrentRevision::Current(4));
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    match c
        .append_to_stream("order-2", &expect(StreamState::StreamExists), placed(0))
        .await
    {
        Err(KurrentError::WrongExpectedVersion { current, .. }) => {
            assert_eq!(current, CurrentRevision::NoStream);
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    // Re-appending the same event id answers the first append's result.
    let id = uuid::Uuid::new_v4();
    let once = c
        .append_to_stream("order-3", &expect(StreamState::NoStream), placed(0).id(id))
        .await
        .expect("append");
    let again = c
        .append_to_stream("order-3", &expect(StreamState::NoStream), placed(0).id(id))
        .await
        .expect("idempotent re-append");
    assert_eq!(once.position, again.position);

    // A binary payload comes back byte for byte, marked as not JSON.
    let blob = bytes::Bytes::from_static(&[0, 0xff, 0xfe, b'{', 1]);
    c.append_to_stream(
        "blob-1",
        &expect(StreamState::NoStream),
        EventData::binary("Blob", blob.clone()),
    )
    .await
    .expect("append binary");
    let mut read = c
        .read_stream("blob-1", &ReadStreamOptions::default())
        .await
        .expect("read");
    let got = read.next().await.expect("read").expect("one event");
    assert_eq!(got.get_original_event().data, blob);
    assert!(!got.get_original_event().is_json);

    // Reads: forward from a revision with a count, backward from the end.
    let forward = ReadStreamOptions::default()
        .forwards()
        .position(StreamPosition::Position(1))
        .max_count(3);
    assert_eq!(read_stream(&c, "order-1", &forward).await, [1, 2, 3]);
    let backward = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(2);
    assert_eq!(read_stream(&c, "order-1", &backward).await, [4, 3]);
    let missing = c
        .read_stream("never-written", &ReadStreamOptions::default())
        .await
        .expect("read");
    let mut missing = missing;
    assert!(matches!(
        missing.next().await,
        Err(KurrentError::ResourceNotFound)
    ));

    // $all with a stream-name prefix filter, and with an event-type regex.
    c.append_to_stream(
        "invoice-1",
        &expect(StreamState::Any),
        EventData::json("InvoiceSent", &json!({"total": 30})).expect("event"),
    )
    .await
    .expect("append");
    let by_stream = ReadAllOptions::default()
        .filter(SubscriptionFilter::on_stream_name().add_prefix("invoice-"))
        .max_count(100);
    let all = drain(c.read_all(&by_stream).await.expect("read $all")).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        (all[0].0.as_str(), all[0].2.as_str()),
        ("invoice-1", "InvoiceSent")
    );
    assert_eq!(all[0].3, json!({"total": 30}));
    let by_type = ReadAllOptions::default()
        .filter(SubscriptionFilter::on_event_type().regex("^Order"))
        .max_count(100);
    let orders = drain(c.read_all(&by_type).await.expect("read $all")).await;
    assert_eq!(orders.len(), 6, "{orders:?}");
    assert!(orders.iter().all(|e| e.2 == "OrderPlaced"));

    // A stream subscription: the history, then a live event.
    let mut subscription = c
        .subscribe_to_stream(
            "order-1",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = tokio::time::timeout(T, subscription.next())
            .await
            .expect("the subscription went quiet")
            .expect("event");
        seen.push(event.get_original_event().revision);
    }
    c.append_to_stream(
        "order-1",
        &expect(StreamState::StreamRevision(4)),
        placed(5),
    )
    .await
    .expect("append while subscribed");
    let live = tokio::time::timeout(T, subscription.next())
        .await
        .expect("the live event never came")
        .expect("event");
    seen.push(live.get_original_event().revision);
    assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
    drop(subscription);

    // Stream metadata: $maxCount hides old events at once; the version counts.
    let none = c
        .get_stream_metadata(
            "order-1",
            &ReadStreamOptions::default().backwards().max_count(1),
        )
        .await
        .expect("metadata");
    assert!(matches!(none, StreamMetadataResult::NotFound));
    let mut metadata = StreamMetadata::builder().max_count(2).build();
    metadata
        .custom_properties
        .insert("owner".to_owned(), json!("billing"));
    c.set_stream_metadata("order-1", &expect(StreamState::NoStream), &metadata)
        .await
        .expect("set metadata");
    match c
        .get_stream_metadata(
            "order-1",
            &ReadStreamOptions::default().backwards().max_count(1),
        )
        .await
        .expect("metadata")
    {
        StreamMetadataResult::Success(versioned) => {
            assert_eq!(versioned.version(), 0);
            assert_eq!(versioned.metadata(), &metadata);
        }
        other => panic!("expected metadata, got {other:?}"),
    }
    let all_of_it = ReadStreamOptions::default().max_count(100);
    assert_eq!(read_stream(&c, "order-1", &all_of_it).await, [4, 5]);
    let stale = c
        .set_stream_metadata("order-1", &expect(StreamState::NoStream), &metadata)
        .await;
    assert!(
        matches!(stale, Err(KurrentError::WrongExpectedVersion { .. })),
        "{stale:?}"
    );

    // Soft delete: not found, then appends continue the revisions.
    c.delete_stream(
        "order-1",
        &DeleteStreamOptions::default().stream_state(StreamState::StreamRevision(5)),
    )
    .await
    .expect("delete");
    let mut gone = c.read_stream("order-1", &all_of_it).await.expect("read");
    assert!(matches!(
        gone.next().await,
        Err(KurrentError::ResourceNotFound)
    ));
    let after = c
        .append_to_stream("order-1", &expect(StreamState::Any), placed(6))
        .await
        .expect("append after a soft delete");
    assert_eq!(after.next_expected_version, 6);

    // Tombstone: reads and appends fail with the stream-deleted error.
    c.tombstone_stream("order-1", &TombstoneStreamOptions::default())
        .await
        .expect("tombstone");
    let mut dead = c.read_stream("order-1", &all_of_it).await.expect("read");
    assert!(matches!(
        dead.next().await,
        Err(KurrentError::ResourceDeleted)
    ));
    let refused = c
        .append_to_stream("order-1", &expect(StreamState::Any), placed(7))
        .await;
    assert!(
        matches!(refused, Err(KurrentError::ResourceDeleted)),
        "{refused:?}"
    );
}

/// A loopback proxy for one connection that can stop passing the server's
/// bytes on while keeping both sockets open: to the server, a client that
/// reads nothing. Returns its address and the switch.
async fn freezable_proxy(server: &str) -> (String, std::sync::Arc<tokio::sync::Notify>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let freeze = std::sync::Arc::new(tokio::sync::Notify::new());
    let (server, frozen) = (server.to_owned(), std::sync::Arc::clone(&freeze));
    tokio::spawn(async move {
        // One connection only: the listener closes, so a client that
        // reconnects cannot come back through here.
        let (client, _) = listener.accept().await.expect("accept");
        drop(listener);
        let upstream = tokio::net::TcpStream::connect(server)
            .await
            .expect("connect");
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = upstream.into_split();
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        let mut buffer = vec![0; 64 << 10];
        loop {
            let read = tokio::select! {
                () = frozen.notified() => break,
                read = server_read.read(&mut buffer) => read,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        // Frozen: hold both sockets open and read nothing more.
        std::future::pending::<()>().await;
        drop((server_read, client_write));
    });
    (address, freeze)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_that_reads_nothing_is_disconnected_and_a_quiet_one_is_not() {
    let server = TestServer::start_with(&[
        "--grpc-listen",
        "127.0.0.1:0",
        "--write-stall-timeout-secs",
        "2",
    ]);
    let grpc = server.grpc.clone().expect("the gRPC address");
    let (proxied, freeze) = freezable_proxy(&grpc).await;
    // Without pings of its own, the stalled client would never notice that
    // its answers stopped: only the server's pings can end its connection.
    let settings: ClientSettings = format!("kurrentdb://{proxied}?tls=false&keepAliveInterval=-1")
        .parse()
        .expect("connection string");
    let stalled = Client::new(settings).expect("client");
    let quiet = client(&grpc);
    let from_start = SubscribeToStreamOptions::default().start_from(StreamPosition::Start);
    let mut stalled_sub = stalled.subscribe_to_stream("ticks", &from_start).await;
    let mut quiet_sub = quiet.subscribe_to_stream("ticks", &from_start).await;
    quiet
        .append_to_stream("ticks", &expect(StreamState::NoStream), placed(0))
        .await
        .expect("append");
    for sub in [&mut stalled_sub, &mut quiet_sub] {
        let first = tokio::time::timeout(T, sub.next())
            .await
            .expect("the subscription went quiet")
            .expect("event");
        assert_eq!(first.get_original_event().revision, 0);
    }
    assert_eq!(server.metric("skald_grpc_connections").await, Some(2));

    // The proxied client now reads nothing: the server's ping goes
    // unanswered and the connection is closed, though the client keeps its
    // socket open.
    freeze.notify_one();
    server.wait_for_metric("skald_grpc_connections", 1).await;

    // The quiet client, idle for as long, answered the pings and still
    // gets what is appended.
    quiet
        .append_to_stream("ticks", &expect(StreamState::StreamRevision(0)), placed(1))
        .await
        .expect("append");
    let live = tokio::time::timeout(T, quiet_sub.next())
        .await
        .expect("the live event never came")
        .expect("event");
    assert_eq!(live.get_original_event().revision, 1);
    assert_eq!(server.metric("skald_grpc_connections").await, Some(1));
}
