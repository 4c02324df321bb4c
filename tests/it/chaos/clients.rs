//! The clients of a chaos run, written as a careful client developer would:
//! a writer retries an append with the same idempotency key until some
//! replica answers it; a watcher resumes with `since=<last seq>` on whichever
//! replica the load balancer picks. Both report everything they were told
//! to the ledger, with the replica that told them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{watch, RwLock};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::faults::Routes;
use super::history::{store_head, Ack, Answer, Ending, Ledger};
use crate::common::pg::TestDb;
use crate::common::Api;

/// A client gives up on one request or handshake after this long and
/// tries again elsewhere: the replica may be frozen.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between appends of one writer.
const WRITE_EVERY: Duration = Duration::from_millis(100);
/// An append not answered by any replica within this long is a failure.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Whether writers start new appends, and a lock each writer holds while
/// one of its appends is unanswered, so that going quiet can wait for them.
pub struct Pace {
    writing: watch::Sender<bool>,
    appending: RwLock<()>,
}

impl Pace {
    pub fn new() -> Pace {
        Pace {
            writing: watch::Sender::new(false),
            appending: RwLock::new(()),
        }
    }

    pub fn write(&self) {
        self.writing.send_replace(true);
    }

    /// Stops new appends and returns once every begun one is answered: a
    /// writer that takes the lock after this sees the flag down.
    pub async fn quiet(&self) {
        self.writing.send_replace(false);
        drop(self.appending.write().await);
    }
}

pub struct Writer {
    pub draft: String,
    pub user: &'static str,
    pub routes: Routes,
    pub pace: Arc<Pace>,
    pub ledger: Arc<Ledger>,
}

impl Writer {
    pub async fn run(self, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut writing = self.pace.writing.subscribe();
        for n in 0.. {
            loop {
                let appending = self.pace.appending.read().await;
                if *writing.borrow_and_update() {
                    self.append(&mut rng, n).await;
                    drop(appending);
                    break;
                }
                drop(appending);
                if writing.changed().await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(WRITE_EVERY).await;
        }
    }

    /// Append `n`, retried with its key until some replica answers.
    async fn append(&self, rng: &mut fastrand::Rng, n: u64) {
        let key = format!("{}-{n}", &self.draft[..8]);
        let content = format!("segment {n} of {}", self.draft);
        let started = tokio::time::Instant::now();
        let mut attempts = 0u32;
        while started.elapsed() < GIVE_UP_AFTER {
            let Some((slot, api)) = self.routes.pick(rng) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            attempts += 1;
            let (answer, body) = self.attempt(&api, &key, &content).await;
            self.ledger.answered(slot, &answer);
            let backoff = match answer {
                Answer::Ok { replayed } => {
                    let ack = Ack {
                        draft: self.draft.clone(),
                        key,
                        content,
                        seq: body["seq"].as_u64().unwrap_or(0),
                        answered_content: body["content"].as_str().map(str::to_owned),
                        replayed,
                        attempts,
                        under: None,
                    };
                    return self.ledger.acked(ack);
                }
                Answer::Refused { status: 429, .. } => Duration::from_millis(500),
                _ => Duration::from_millis(rng.u64(50..200)),
            };
            tokio::time::sleep(backoff).await;
        }
        self.ledger.violation(format!(
            "promise 6: no replica answered the append {key} within {GIVE_UP_AFTER:?}"
        ));
    }

    async fn attempt(&self, api: &Api, key: &str, content: &str) -> (Answer, Value) {
        let sent = api
            .http
            .post(api.url(&format!("/v1/collab/drafts/{}/segments", self.draft)))
            .bearer_auth(api.token(self.user))
            .timeout(CLIENT_TIMEOUT)
            .json(&json!({ "content": content, "idempotency_key": key }))
            .send()
            .await;
        let Ok(response) = sent else {
            return (Answer::NoResponse, Value::Null);
        };
        let status = response.status().as_u16();
        // A body that cannot be read is no answer: the client cannot know.
        let Ok(body) = response.json::<Value>().await else {
            return (Answer::NoResponse, Value::Null);
        };
        let answer = match status {
            201 | 200 => Answer::Ok {
                replayed: status == 200,
            },
            _ => Answer::Refused {
                status,
                code: body["error"]["code"].as_str().unwrap_or("").to_owned(),
            },
        };
        (answer, body)
    }
}

/// What one watcher has seen: its events in arrival order, across every
/// socket it opened.
#[derive(Default)]
pub struct Seen {
    pub events: Vec<(u64, String)>,
    pub sockets: u32,
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
    pub db: Arc<TestDb>,
    pub seen: Arc<Mutex<Seen>>,
    pub ledger: Arc<Ledger>,
}

impl Watcher {
    pub async fn run(self, seed: u64) {
        let mut rng = fastrand::Rng::with_seed(seed);
        loop {
            let Some((slot, api)) = self.routes.pick(&mut rng) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let ending = self.follow(&api).await;
            self.ledger.socket_ended(slot, &self.name, ending);
            tokio::time::sleep(Duration::from_millis(rng.u64(20..150))).await;
        }
    }

    /// One socket: resume after the last seq seen, read until it ends.
    async fn follow(&self, api: &Api) -> Ending {
        let since = self.seen.lock().unwrap().last();
        // The head the store had before we asked: `ready` may not be older.
        let head_before = store_head(&self.db, &self.draft).await;
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
            Ok(Err(e)) => return Ending::NotJoined(format!("connect: {e}")),
            Err(_) => return Ending::NotJoined("connect timed out".into()),
        };
        self.seen.lock().unwrap().sockets += 1;
        let mut joined = false;
        let mut error_code = String::new();
        while let Some(message) = stream.next().await {
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Close(frame)) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    let why = format!("closed {code} {error_code}");
                    return match joined {
                        true => Ending::Dropped(why),
                        false => Ending::NotJoined(why),
                    };
                }
                Ok(_) => continue,
                Err(e) => return Ending::Dropped(format!("socket: {e}")),
            };
            let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else {
                return Ending::Broken(format!("a frame that is not JSON: {text}"));
            };
            match frame["type"].as_str() {
                Some("ready") => {
                    let head = frame["seq"].as_u64().unwrap_or(0);
                    if head < head_before.max(since) {
                        return Ending::Broken(format!(
                            "ready at head {head}; the store was at {head_before} and the watcher at {since}: a stale head"
                        ));
                    }
                    joined = true;
                }
                Some("error") => error_code = frame["code"].as_str().unwrap_or("").to_owned(),
                Some(_) if frame["seq"].is_u64() => {
                    if let Err(what) = self.take(&frame) {
                        return Ending::Broken(what);
                    }
                }
                _ => {}
            }
        }
        Ending::Dropped("socket ended without a close frame".into())
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
}
