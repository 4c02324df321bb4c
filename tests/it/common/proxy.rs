//! A TCP proxy a test can cut and restore, to make a backend unreachable
//! without touching the shared server: `cut` closes every open connection and
//! refuses new ones until `restore`. For Postgres it can also lose the reply
//! to one COMMIT (the transaction commits, the client never hears so), or
//! cut a connection just before its COMMIT (every statement of the
//! transaction ran, none committed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A simple-protocol `COMMIT`, as tokio-postgres sends it: 'Q', the length
/// (4 + 7), the text and its NUL.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

/// What happens to the next COMMIT any connection sends.
const PASS: u8 = 0;
/// It reaches the server; its reply is dropped with the connection.
const LOSE_REPLY: u8 = 1;
/// It never reaches the server: the connection is dropped instead.
const CUT_BEFORE: u8 = 2;

pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// What the next COMMIT meets: PASS, LOSE_REPLY or CUT_BEFORE.
    commit: Arc<AtomicU8>,
    /// Cancelled on cut; replaced by a fresh token for later connections.
    generation: Arc<Mutex<CancellationToken>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let commit = Arc::new(AtomicU8::new(PASS));
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let accept = {
            let (open, generation) = (open.clone(), generation.clone());
            let commit = commit.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let cut = generation.lock().unwrap().clone();
                    let commit = commit.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = pump(&mut inbound, &mut outbound, &commit) => {}
                            _ = cut.cancelled() => {}
                        }
                    });
                }
            })
        };
        Proxy {
            addr,
            open,
            commit,
            generation,
            accept,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let mut generation = self.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// The next COMMIT any connection sends reaches the server; its reply
    /// does not reach the client, whose connection is then dropped.
    pub fn lose_next_commit_reply(&self) {
        self.commit.store(LOSE_REPLY, Ordering::SeqCst);
    }

    /// The next COMMIT any connection sends never reaches the server: its
    /// connection is dropped instead, and the server rolls back.
    pub fn cut_before_next_commit(&self) {
        self.commit.store(CUT_BEFORE, Ordering::SeqCst);
    }

    /// Whether the armed COMMIT has met its fate (lost reply or cut).
    pub fn armed_commit_met(&self) -> bool {
        self.commit.load(Ordering::SeqCst) == PASS
    }
}

/// Copies both ways until either side closes; when `commit` is armed, the
/// first COMMIT either is forwarded and the server's reply to it swallowed,
/// or is dropped; either way the connection ends.
async fn pump(inbound: &mut TcpStream, outbound: &mut TcpStream, commit: &AtomicU8) {
    let (mut client_read, mut client_write) = inbound.split();
    let (mut server_read, mut server_write) = outbound.split();
    let committing = AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if chunk.windows(COMMIT.len()).any(|w| w == COMMIT) {
                match commit.swap(PASS, Ordering::SeqCst) {
                    LOSE_REPLY => committing.store(true, Ordering::SeqCst),
                    CUT_BEFORE => return,
                    _ => {}
                }
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if committing.load(Ordering::SeqCst) {
                // The server answered the COMMIT: it is durable. Lose it.
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.lock().unwrap().cancel();
    }
}
