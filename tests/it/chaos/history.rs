//! What a chaos run saw, and its check against the promises: the store's
//! log (read straight from Postgres, past every proxy), each writer's
//! answers, each watcher's events.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::clients::Seen;
use super::faults::Fault;
use crate::common::pg::TestDb;

/// One append as its writer was finally told.
#[derive(Debug, Clone)]
pub struct Ack {
    pub draft: String,
    pub key: String,
    pub content: String,
    pub seq: u64,
    /// The content the answer carried: the original, on a replay.
    pub answered_content: Option<String>,
    /// Answered 200: a retry found its key already committed.
    pub replayed: bool,
    pub attempts: u32,
    /// The fault in force when it was answered.
    pub under: Option<Fault>,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    Ok {
        replayed: bool,
    },
    Refused {
        status: u16,
        code: String,
    },
    /// Connection refused, reset, or no answer in time.
    NoResponse,
}

/// How one watcher's socket ended.
#[derive(Debug)]
pub enum Ending {
    /// Before `ready`: refused, unreachable, or closed at once.
    NotJoined(String),
    /// After `ready`: the server or the network dropped a served socket.
    Dropped(String),
    /// A frame the protocol does not allow: a promise-2 violation.
    Broken(String),
}

/// Everything the clients report, judged against the fault in force.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    fault: Option<Fault>,
    acks: Vec<Ack>,
    answers: BTreeMap<(&'static str, Answer), u64>,
    endings: BTreeMap<(&'static str, &'static str), u64>,
    violations: Vec<String>,
}

impl Inner {
    fn kind(&self) -> &'static str {
        self.fault.map(Fault::kind).unwrap_or("none")
    }
}

impl Ledger {
    /// The fault now in force (None between faults).
    pub fn under(&self, fault: Option<Fault>) {
        self.inner.lock().unwrap().fault = fault;
    }

    pub fn acked(&self, mut ack: Ack) {
        let mut inner = self.inner.lock().unwrap();
        ack.under = inner.fault;
        inner.acks.push(ack);
    }

    /// Promise 6, as each answer comes from replica `slot`: never a 500 or
    /// a 429 (the limits are far above the load); a 503 only from a replica
    /// the fault cut from Postgres or froze; no answer only from one it
    /// killed or froze. With only Redis in trouble, every request is served.
    pub fn answered(&self, slot: usize, answer: &Answer) {
        let mut inner = self.inner.lock().unwrap();
        let fault = inner.fault;
        let excused = match answer {
            Answer::Ok { .. } => true,
            Answer::Refused { status: 503, code } => {
                code == "unavailable" && fault.is_some_and(|f| f.excuses(slot))
            }
            Answer::Refused { .. } => false,
            Answer::NoResponse => fault.is_some_and(|f| f.stops(slot)),
        };
        let kind = inner.kind();
        if !excused {
            inner.violations.push(format!(
                "promise 6: an append answered {answer:?} from replica {slot} under {kind}"
            ));
        }
        *inner.answers.entry((kind, answer.clone())).or_default() += 1;
    }

    /// A served socket is dropped only by a replica that dies or freezes
    /// (promise 6: with a backend gone, replicas keep serving their
    /// sockets); a join fails only on a replica the fault touches.
    pub fn socket_ended(&self, slot: usize, watcher: &str, ending: Ending) {
        let mut inner = self.inner.lock().unwrap();
        let fault = inner.fault;
        let kind = inner.kind();
        let (label, wrong) = match &ending {
            Ending::NotJoined(why) => (
                "not_joined",
                (!fault.is_some_and(|f| f.excuses(slot))).then(|| {
                    format!(
                        "promise 6: {watcher} could not join replica {slot} under {kind}: {why}"
                    )
                }),
            ),
            Ending::Dropped(why) => (
                "dropped",
                (!fault.is_some_and(|f| f.stops(slot))).then(|| {
                    format!(
                        "promise 6: replica {slot} dropped {watcher}'s socket under {kind}: {why}"
                    )
                }),
            ),
            Ending::Broken(what) => (
                "broken",
                Some(format!("promise 2: watcher {watcher}: {what}")),
            ),
        };
        inner.violations.extend(wrong);
        *inner.endings.entry((kind, label)).or_default() += 1;
    }

    pub fn violation(&self, what: String) {
        self.inner.lock().unwrap().violations.push(what);
    }

    /// Each distinct violation once, with how often it happened.
    pub fn violations(&self) -> Vec<String> {
        let mut counted: Vec<(String, usize)> = Vec::new();
        for v in &self.inner.lock().unwrap().violations {
            match counted.iter_mut().find(|(seen, _)| seen == v) {
                Some((_, n)) => *n += 1,
                None => counted.push((v.clone(), 1)),
            }
        }
        counted
            .into_iter()
            .map(|(v, n)| if n == 1 { v } else { format!("{v} (x{n})") })
            .collect()
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.inner.lock().unwrap().acks.clone()
    }

    /// "kind: answer xN" and "kind: socket ending xN" lines, for the report.
    pub fn tally(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        let answers = inner
            .answers
            .iter()
            .map(|((kind, answer), n)| format!("{kind}: append {answer:?} x{n}"));
        let endings = inner
            .endings
            .iter()
            .map(|((kind, ending), n)| format!("{kind}: socket {ending} x{n}"));
        answers.chain(endings).collect()
    }
}

/// The store's head of a draft, read past every proxy.
pub async fn store_head(db: &TestDb, draft: &str) -> u64 {
    let id: uuid::Uuid = draft.parse().unwrap();
    let row = db
        .client()
        .await
        .query_one("SELECT seq FROM drafts WHERE id = $1", &[&id])
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

/// One draft's log as the store holds it.
pub struct Log {
    pub head: u64,
    /// seq -> (event type, segment content or "").
    pub events: BTreeMap<u64, (String, String)>,
    /// Every segment row: (idempotency key, seq, content).
    pub segments: Vec<(String, u64, String)>,
}

pub async fn read_log(db: &TestDb, draft: &str) -> Log {
    let client = db.client().await;
    let id: uuid::Uuid = draft.parse().unwrap();
    let events = client
        .query(
            "SELECT seq, type, coalesce(data #>> '{segment,content}', '')
               FROM events WHERE draft_id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0) as u64, (r.get(1), r.get(2))))
        .collect();
    let segments = client
        .query(
            "SELECT coalesce(idempotency_key, ''), seq, content
               FROM segments WHERE draft_id = $1 ORDER BY seq",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2)))
        .collect();
    Log {
        head: store_head(db, draft).await,
        events,
        segments,
    }
}

/// Promise 1: the log is 1..=head with no gap, and the head agrees.
pub fn check_log(draft: &str, log: &Log) -> Vec<String> {
    let seqs: Vec<u64> = log.events.keys().copied().collect();
    let expected: Vec<u64> = (1..=log.head).collect();
    if seqs == expected {
        Vec::new()
    } else {
        vec![format!(
            "promise 1: draft {draft} has head {} and event seqs {}",
            log.head,
            ranges(&seqs)
        )]
    }
}

/// Promise 4 (and 1's durability): every append a writer was told about is
/// in the log once, at the seq it was told, with its content; the log holds
/// no segment no writer asked for, and one `segment_appended` event per
/// segment, at its seq; a replay answers with the original.
pub fn check_appends(draft: &str, log: &Log, acks: &[&Ack]) -> Vec<String> {
    let mut wrong = Vec::new();
    let rows_of = |key: &str| {
        log.segments
            .iter()
            .filter(|(k, _, _)| k == key)
            .collect::<Vec<_>>()
    };
    for ack in acks {
        match rows_of(&ack.key).as_slice() {
            [] => wrong.push(format!(
                "promise 1: draft {draft}: append {} was answered seq {} but is not stored",
                ack.key, ack.seq
            )),
            [(_, seq, content)] => {
                if *seq != ack.seq || *content != ack.content {
                    wrong.push(format!(
                        "promise 4: draft {draft}: append {} was answered seq {}, stored at {seq}",
                        ack.key, ack.seq
                    ));
                }
                if ack.answered_content.as_deref() != Some(content.as_str()) {
                    wrong.push(format!(
                        "promise 4: draft {draft}: the answer to {} did not carry the stored segment",
                        ack.key
                    ));
                }
            }
            rows => wrong.push(format!(
                "promise 4: draft {draft}: append {} is stored {} times",
                ack.key,
                rows.len()
            )),
        }
        if ack.replayed && ack.attempts == 1 {
            wrong.push(format!(
                "promise 4: draft {draft}: a first attempt of {} was answered as a replay",
                ack.key
            ));
        }
    }
    if log.segments.len() != acks.len() {
        wrong.push(format!(
            "promise 4: draft {draft} stores {} segments for {} appends",
            log.segments.len(),
            acks.len()
        ));
    }
    let appended: Vec<(u64, &str)> = log
        .events
        .iter()
        .filter(|(_, (kind, _))| kind == "segment_appended")
        .map(|(seq, (_, content))| (*seq, content.as_str()))
        .collect();
    let stored: Vec<(u64, &str)> = log
        .segments
        .iter()
        .map(|(_, seq, content)| (*seq, content.as_str()))
        .collect();
    if appended != stored {
        wrong.push(format!(
            "promise 1: draft {draft}: {} segment_appended events for {} segments, or at other seqs",
            appended.len(),
            stored.len()
        ));
    }
    wrong
}

/// Promise 2: a watcher saw the whole log, once, in order, with the
/// stored content (its order was checked as the events came).
pub fn check_watcher(name: &str, log: &Log, seen: &Seen) -> Vec<String> {
    let stored: Vec<(u64, String)> = log
        .events
        .iter()
        .map(|(seq, (_, content))| (*seq, content.clone()))
        .collect();
    if seen.events == stored {
        return Vec::new();
    }
    let first_difference = stored
        .iter()
        .zip(&seen.events)
        .position(|(a, b)| a != b)
        .unwrap_or(stored.len().min(seen.events.len()));
    vec![format!(
        "promise 2: watcher {name} saw {} events, the log holds {}; they differ from position {first_difference}",
        seen.events.len(),
        stored.len()
    )]
}

/// "1-5, 7-9": seqs as runs, so a gap reads at a glance.
fn ranges(seqs: &[u64]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let start = seqs[i];
        while i + 1 < seqs.len() && seqs[i + 1] == seqs[i] + 1 {
            i += 1;
        }
        runs.push(if start == seqs[i] {
            start.to_string()
        } else {
            format!("{start}-{}", seqs[i])
        });
        i += 1;
    }
    if runs.is_empty() {
        "none".into()
    } else {
        runs.join(", ")
    }
}
