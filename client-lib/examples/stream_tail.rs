//! `stream_tail`: prints events live, from the end of `$all` (or of one stream).
//!
//! Run: `cargo run -p skald-client --example stream_tail -- [URL] [STREAM]`

use futures::StreamExt;
use skald_client::{Client, SubscribeOptions, SubscriptionMessage};

#[tokio::main]
async fn main() -> Result<(), skald_client::Error> {
    let mut args = std::env::args().skip(1);
    let client = Client::new(
        args.next()
            .unwrap_or_else(|| "http://127.0.0.1:2114".into()),
    )?;
    let options = SubscribeOptions::default().from_end();
    let mut messages = match args.next() {
        Some(stream) => client.subscribe_stream(&stream, options),
        None => client.subscribe_all(options),
    };
    while let Some(message) = messages.next().await {
        match message? {
            SubscriptionMessage::Event(e) => {
                println!(
                    "{:>8} {}@{} {} {}",
                    e.position, e.stream, e.revision, e.event_type, e.data
                )
            }
            SubscriptionMessage::CaughtUp { .. } => eprintln!("-- live --"),
            _ => {}
        }
    }
    Ok(())
}
