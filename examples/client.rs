//! The client library in a few lines: `cargo run --example client -- 127.0.0.1:8000` against a
//! running ring (`sdht demo` starts one). Add `--token-file PATH`'s content as SDHT_CLIENT_TOKEN
//! when the nodes require a client token.

use sdht::client::Op;
use sdht::Client;

#[tokio::main]
async fn main() -> Result<(), sdht::client::Error> {
    let seeds: Vec<String> = std::env::args().skip(1).collect();
    let seeds = if seeds.is_empty() { vec!["127.0.0.1:8000".to_string()] } else { seeds };
    let mut builder = Client::builder(seeds);
    if let Ok(token) = std::env::var("SDHT_CLIENT_TOKEN") {
        builder = builder.token(token);
    }
    let sdht = builder.build()?;

    sdht.put("greeting", "hello").await?;
    let value = sdht.get("greeting").await?;
    println!("greeting = {:?}", value.as_deref().map(String::from_utf8_lossy));

    // The answers taught the client who owns the key: this request goes straight there.
    let answer = sdht.request("greeting", Op::Get).await?;
    let hops = if answer.hops == 1 { "1 hop".to_string() } else { format!("{} hops", answer.hops) };
    println!("served by {} in {hops}", answer.owner.unwrap_or_default());

    // One /ring walk teaches it every node's range.
    print!("{}", sdht.ring().await?);
    println!("deleted: {}", sdht.delete("greeting").await?);
    Ok(())
}
