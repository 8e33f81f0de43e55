//! Micro benchmarks of the event record codec (encode, decode with CRC check)
//! and of the check every appended payload passes (`check_json_text` and its
//! scan for texts already parsed, `check_raw_json`: nesting depth, values
//! every JSON reader can hold), and of decoding a whole append body of 100
//! such events (`decode_append`, on its fast path and on the serde path).
//!
//! Run: `cargo bench --bench codec`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use skald_server::model::{RecordedEvent, StreamName};
use skald_server::storage::codec;

fn event(data_len: usize) -> RecordedEvent {
    RecordedEvent {
        position: 123_456,
        stream: StreamName::parse("order-123456").expect("valid name"),
        revision: 42,
        id: uuid::Uuid::now_v7(),
        event_type: "OrderPlaced".into(),
        data: format!("{{\"payload\":\"{}\"}}", "x".repeat(data_len)),
        metadata: Some("{\"user\":\"ann\"}".into()),
        recorded_at_micros: 1_790_000_000_000_000,
        content_type: skald_server::model::ContentType::Json,
    }
}

fn codec_benches(c: &mut Criterion) {
    for size in [100, 1_000, 10_000] {
        let e = event(size);
        let bytes = codec::encode_event(&e);
        let mut group = c.benchmark_group(format!("record_{size}B"));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function("encode", |b| {
            b.iter(|| codec::encode_event(std::hint::black_box(&e)))
        });
        group.bench_function("decode_checked", |b| {
            b.iter(|| codec::decode_event(123_456, std::hint::black_box(&bytes)).expect("valid"))
        });
        group.finish();
    }
}

/// The payload of the shared benchmark harness: about 150 bytes of data and 75
/// of metadata per event.
fn payload_check_benches(c: &mut Criterion) {
    let data = r#"{"order_id":"ord-000123","customer":"cust-42","lines":[{"sku":"A-1","qty":2,"price":9.99},{"sku":"B-7","qty":1,"price":24.5}],"total":44.48}"#;
    let metadata = r#"{"correlation_id":"0190a1b2-0000-7000-8000-000000000001","user":"ann"}"#;
    let mut group = c.benchmark_group("payload_checks");
    group.throughput(Throughput::Bytes((data.len() + metadata.len()) as u64));
    group.bench_function("check_json_text", |b| {
        b.iter(|| {
            skald_server::model::check_json_text(std::hint::black_box(data)).expect("valid");
            skald_server::model::check_json_text(std::hint::black_box(metadata)).expect("valid");
        })
    });
    let (raw_data, raw_metadata): (&serde_json::value::RawValue, &serde_json::value::RawValue) = (
        serde_json::from_str(data).expect("valid"),
        serde_json::from_str(metadata).expect("valid"),
    );
    group.bench_function("check_raw_json", |b| {
        b.iter(|| {
            skald_server::model::check_raw_json(std::hint::black_box(raw_data)).expect("valid");
            skald_server::model::check_raw_json(std::hint::black_box(raw_metadata)).expect("valid");
        })
    });
    group.bench_function("raw_value_parse", |b| {
        b.iter(|| {
            serde_json::from_str::<Box<serde_json::value::RawValue>>(std::hint::black_box(data))
                .expect("valid")
        })
    });
    group.finish();
}

/// An append body as the harness's W3 sends it: 100 events, each with a
/// client id, a type, the data and metadata above. `type` spelled with an
/// escape (`OrderPl\u0061ced`, the same type) sends the body down the serde
/// path, which takes what the fast path hands on.
fn append_body(escaped_type: bool) -> Vec<u8> {
    let data = r#"{"order_id":"ord-000123","customer":"cust-42","lines":[{"sku":"A-1","qty":2,"price":9.99},{"sku":"B-7","qty":1,"price":24.5}],"total":44.48}"#;
    let metadata = r#"{"correlation_id":"0190a1b2-0000-7000-8000-000000000001","user":"ann"}"#;
    let event_type = if escaped_type {
        "OrderPl\\u0061ced"
    } else {
        "OrderPlaced"
    };
    let events: Vec<String> = (0..100u128)
        .map(|n| {
            let id = uuid::Uuid::from_u128(0x0190_a1b2_0000_4000_8000_0000_0000_0000 + n * 7919);
            format!(r#"{{"id":"{id}","type":"{event_type}","data":{data},"metadata":{metadata}}}"#)
        })
        .collect();
    format!(
        r#"{{"expected_revision":"any","events":[{}]}}"#,
        events.join(",")
    )
    .into_bytes()
}

fn append_body_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("append_body_100_events");
    for (name, escaped) in [("fast_path", false), ("serde_path", true)] {
        let body = append_body(escaped);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                skald_server::http::decode_append(std::hint::black_box(&body), 1 << 20)
                    .expect("valid")
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    codec_benches,
    payload_check_benches,
    append_body_benches
);
criterion_main!(benches);
