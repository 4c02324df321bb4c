//! Watches a draft: connects to its WebSocket and prints every frame.
//!
//! ```text
//! cargo run --example watch -- ws://127.0.0.1:3000/v1/collab/drafts/<id>/ws?since=0 <token>
//! ```
//!
//! It sends `{"type":"ping"}` every 20 s, and exits when the server closes.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(token)) = (args.next(), args.next()) else {
        eprintln!("usage: watch <ws-url> <token>");
        std::process::exit(2);
    };
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let mut ping = tokio::time::interval(Duration::from_secs(20));
    ping.tick().await;
    loop {
        tokio::select! {
            _ = ping.tick() => socket.send(Message::Text(r#"{"type":"ping"}"#.into())).await?,
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => println!("{text}"),
                Some(Ok(Message::Close(frame))) => {
                    println!("closed: {frame:?}");
                    return Ok(());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
}
