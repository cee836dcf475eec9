//! A tiny webhook receiver for trying Busbar out: prints every request it gets
//! (the CloudEvents `ce-*` headers and the body) and answers 200.
//!
//! Run: `cargo run -p busbar --example sink -- 127.0.0.1:9000`

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use axum::routing::any;

async fn print(uri: Uri, headers: HeaderMap, body: Bytes) -> &'static str {
    println!("--- {uri}");
    for (name, value) in &headers {
        if name.as_str().starts_with("ce-")
            || name == "content-type"
            || name.as_str().starts_with("webhook-")
        {
            println!("{name}: {}", value.to_str().unwrap_or("<binary>"));
        }
    }
    println!("{}", String::from_utf8_lossy(&body));
    "ok"
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("sink listening on http://{}", listener.local_addr()?);
    axum::serve(listener, Router::new().fallback(any(print))).await?;
    Ok(())
}
