//! What a chaos run saw, and its check against the promises: the store's
//! log (read straight from Postgres, past every proxy), each writer's
//! answers, each watcher's events.

use std::collections::{BTreeMap, HashMap};
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
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    Ok,
    Refused {
        status: u16,
        code: String,
    },
    /// Connection refused, reset, or no answer in time.
    NoResponse,
}

/// Everything the clients report, tallied under the fault in force.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    fault: Option<Fault>,
    acks: Vec<Ack>,
    answers: BTreeMap<(&'static str, Answer), u64>,
    violations: Vec<String>,
}

impl Ledger {
    /// The fault now in force (None between faults).
    pub fn under(&self, fault: Option<Fault>) {
        self.inner.lock().unwrap().fault = fault;
    }

    pub fn acked(&self, ack: Ack) {
        self.inner.lock().unwrap().acks.push(ack);
    }

    /// Promise 6, as each answer comes: no 500 ever; no 503 while only
    /// Redis is in trouble; no lost connection unless a replica is.
    pub fn answered(&self, answer: Answer) {
        let mut inner = self.inner.lock().unwrap();
        let fault = inner.fault;
        let kind = fault.map(Fault::kind).unwrap_or("none");
        let wrong = match (&answer, fault) {
            (Answer::Ok, _) => None,
            (Answer::Refused { status: 503, code }, Some(f))
                if code == "unavailable" && !f.spares_postgres() =>
            {
                None
            }
            (Answer::Refused { status: 429, .. }, _) => None,
            (Answer::NoResponse, Some(f)) if f.stops_a_replica() => None,
            (other, _) => Some(other.clone()),
        };
        if let Some(wrong) = wrong {
            inner.violations.push(format!(
                "promise 6: an append answered {wrong:?} under {kind}"
            ));
        }
        *inner.answers.entry((kind, answer)).or_default() += 1;
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

    /// "kind: answer x count" lines, for the run's report.
    pub fn tally(&self) -> Vec<String> {
        self.inner
            .lock()
            .unwrap()
            .answers
            .iter()
            .map(|((kind, answer), n)| format!("{kind}: {answer:?} x{n}"))
            .collect()
    }
}

/// One draft's log as the store holds it: seq -> (event type, content).
pub struct Log {
    pub head: u64,
    pub events: BTreeMap<u64, (String, String)>,
    /// idempotency key -> (seq, content) of its segment.
    pub segments: HashMap<String, (u64, String)>,
}

pub async fn read_log(db: &TestDb, draft: &str) -> Log {
    let client = db.client().await;
    let id: uuid::Uuid = draft.parse().unwrap();
    let head: i64 = client
        .query_one("SELECT seq FROM drafts WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
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
            "SELECT idempotency_key, seq, content FROM segments WHERE draft_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let key: Option<String> = r.get(0);
            (
                key.unwrap_or_default(),
                (r.get::<_, i64>(1) as u64, r.get(2)),
            )
        })
        .collect();
    Log {
        head: head as u64,
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
/// no segment no writer asked for; a replay answers with the original.
pub fn check_appends(draft: &str, log: &Log, acks: &[&Ack]) -> Vec<String> {
    let mut wrong = Vec::new();
    for ack in acks {
        match log.segments.get(&ack.key) {
            None => wrong.push(format!(
                "promise 1: draft {draft}: append {} was answered seq {} but is not stored",
                ack.key, ack.seq
            )),
            Some((seq, content)) => {
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
