//! Micro benchmarks of the event record codec (encode, decode with CRC check).
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

criterion_group!(benches, codec_benches);
criterion_main!(benches);
