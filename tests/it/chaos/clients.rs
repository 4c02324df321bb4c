//! The clients of a chaos run, written as a careful client developer would:
//! a writer retries an append with the same idempotency key until some
//! replica answers it; a watcher resumes with `since=<last seq>` on whichever
//! replica the load balancer picks. Both write down everything they were
//! told, for the history check.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::faults::Routes;
use super::history::{Ack, Answer, Ledger};

/// A client gives up on one request or handshake after this long and
/// tries again elsewhere: the replica may be frozen.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between appends of one writer.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// An append not answered by any replica within this long is a failure.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Whether writers start new appends. An append already begun is always
/// retried to its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    Write,
    Quiet,
}

pub struct Writer {
    pub draft: String,
    pub user: &'static str,
    pub routes: Routes,
    pub pace: watch::Receiver<Pace>,
    pub ledger: Arc<Ledger>,
    /// Set while an append is unanswered: the harness waits for it to clear
    /// before the silence begins.
    pub busy: Arc<AtomicBool>,
}

impl Writer {
    pub async fn run(mut self, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut n = 0u64;
        loop {
            // Busy first, then the pace: the harness sets the pace first,
            // then reads busy, so it never misses an append starting.
            self.busy.store(true, SeqCst);
            if *self.pace.borrow_and_update() == Pace::Quiet {
                self.busy.store(false, SeqCst);
                if self.pace.changed().await.is_err() {
                    return;
                }
                continue;
            }
            n += 1;
            let key = format!("{}-{n}", &self.draft[..8]);
            let content = format!("segment {n} of {}", self.draft);
            let ack = self.append_until_answered(&mut rng, &key, &content).await;
            self.ledger.acked(ack);
            self.busy.store(false, SeqCst);
            tokio::time::sleep(WRITE_EVERY).await;
        }
    }

    async fn append_until_answered(
        &self,
        rng: &mut fastrand::Rng,
        key: &str,
        content: &str,
    ) -> Ack {
        let started = tokio::time::Instant::now();
        let mut attempts = 0u32;
        loop {
            assert!(
                started.elapsed() < GIVE_UP_AFTER,
                "no replica answered the append {key} within {GIVE_UP_AFTER:?}"
            );
            let Some(api) = self.routes.pick(rng) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            attempts += 1;
            let sent = api
                .http
                .post(api.url(&format!("/v1/collab/drafts/{}/segments", self.draft)))
                .bearer_auth(api.token(self.user))
                .timeout(CLIENT_TIMEOUT)
                .json(&json!({ "content": content, "idempotency_key": key }))
                .send()
                .await;
            let answer = match sent {
                Err(_) => Answer::NoResponse,
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    match status {
                        201 | 200 => {
                            self.ledger.answered(Answer::Ok);
                            return Ack {
                                draft: self.draft.clone(),
                                key: key.to_owned(),
                                content: content.to_owned(),
                                seq: body["seq"].as_u64().unwrap_or(0),
                                answered_content: body["content"].as_str().map(str::to_owned),
                                replayed: status == 200,
                                attempts,
                            };
                        }
                        _ => Answer::Refused {
                            status,
                            code: body["error"]["code"].as_str().unwrap_or("").to_owned(),
                        },
                    }
                }
            };
            let backoff = match &answer {
                Answer::Refused { status: 429, .. } => Duration::from_millis(500),
                _ => Duration::from_millis(rng.u64(50..200)),
            };
            self.ledger.answered(answer);
            tokio::time::sleep(backoff).await;
        }
    }
}

/// What one watcher has seen: its events in arrival order, across every
/// socket it opened.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<(u64, String)>,
    pub sockets: u32,
    pub closes: Vec<String>,
}

impl Seen {
    pub fn last(&self) -> u64 {
        self.events.last().map(|(seq, _)| *seq).unwrap_or(0)
    }
}

pub struct Watcher {
    pub name: String,
    pub draft: String,
    pub user: &'static str,
    pub routes: Routes,
    pub seen: Arc<Mutex<Seen>>,
    pub ledger: Arc<Ledger>,
}

/// Why a socket ended, as the watcher tells it.
enum End {
    Closed(String),
    /// A frame the protocol does not allow here: recorded as a violation,
    /// and the watcher starts over from its last seq.
    Broken(String),
}

impl Watcher {
    pub async fn run(self, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        loop {
            let Some(api) = self.routes.pick(&mut rng) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let end = self.follow(&api).await;
            self.record(end);
            tokio::time::sleep(Duration::from_millis(rng.u64(20..150))).await;
        }
    }

    fn record(&self, end: End) {
        let mut seen = self.seen.lock().unwrap();
        match end {
            End::Closed(why) => seen.closes.push(why),
            End::Broken(what) => {
                seen.closes.push("broken".into());
                self.ledger
                    .violation(format!("promise 2: watcher {}: {what}", self.name));
            }
        }
    }

    /// One socket: resume after the last seq seen, read until it ends.
    async fn follow(&self, api: &crate::common::Api) -> End {
        let since = self.seen.lock().unwrap().last();
        let url = api.ws_url(&self.draft, &format!("?since={since}"));
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", api.token(self.user)).parse().unwrap(),
        );
        let connected =
            tokio::time::timeout(CLIENT_TIMEOUT, tokio_tungstenite::connect_async(request)).await;
        let mut stream = match connected {
            Ok(Ok((stream, _))) => stream,
            Ok(Err(e)) => return End::Closed(format!("connect: {e}")),
            Err(_) => return End::Closed("connect timed out".into()),
        };
        self.seen.lock().unwrap().sockets += 1;
        let mut error_code = None;
        while let Some(message) = stream.next().await {
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(frame)) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    return self.closed_with(code, error_code);
                }
                Ok(_) => continue,
                Err(e) => return End::Closed(format!("socket: {e}")),
            };
            let frame: Value = match serde_json::from_str(text.as_str()) {
                Ok(frame) => frame,
                Err(_) => return End::Broken(format!("a frame that is not JSON: {text}")),
            };
            match frame["type"].as_str() {
                Some("ready") => {
                    let head = frame["seq"].as_u64().unwrap_or(0);
                    if head < since {
                        return End::Broken(format!(
                            "ready at head {head} after seeing seq {since}: a stale head"
                        ));
                    }
                }
                Some("error") => error_code = frame["code"].as_str().map(str::to_owned),
                Some(_) if frame["seq"].is_u64() => {
                    if let Err(what) = self.take(&frame) {
                        return End::Broken(what);
                    }
                }
                _ => {}
            }
        }
        End::Closed("socket ended without a close frame".into())
    }

    /// An event: it must be the next seq, exactly.
    fn take(&self, frame: &Value) -> Result<(), String> {
        let seq = frame["seq"].as_u64().unwrap();
        let content = frame["data"]["segment"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut seen = self.seen.lock().unwrap();
        let expected = seen.last() + 1;
        if seq != expected {
            return Err(format!("got seq {seq} where {expected} was next"));
        }
        seen.events.push((seq, content));
        Ok(())
    }

    /// Closes the server may make in a run like this: going away on a
    /// drain, try-again-later (a slow consumer, a backend out). A policy
    /// close would mean the server refused a well-behaved client.
    fn closed_with(&self, code: u16, error_code: Option<String>) -> End {
        let error = error_code.unwrap_or_default();
        match (code, error.as_str()) {
            (1001, _) | (1013, "slow_consumer" | "unavailable" | "") => {
                End::Closed(format!("{code} {error}"))
            }
            _ => End::Broken(format!("closed with {code} and error `{error}`")),
        }
    }
}
