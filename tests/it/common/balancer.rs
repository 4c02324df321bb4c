//! A load balancer for tests, at the TCP level: each new connection goes to
//! the next replica in turn that accepts it, so when one dies its clients'
//! reconnects land on the others, as behind a real load balancer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

pub struct Balancer {
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Balancer {
    pub async fn start(targets: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (targets, next) = (targets.clone(), next.clone());
                tokio::spawn(async move {
                    let Some(mut outbound) = connect_next(&targets, &next).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        Balancer { addr, accept }
    }
}

/// The next target in turn that accepts a connection.
async fn connect_next(targets: &[SocketAddr], next: &AtomicUsize) -> Option<TcpStream> {
    for _ in 0..targets.len() {
        let target = targets[next.fetch_add(1, Ordering::Relaxed) % targets.len()];
        if let Ok(stream) = TcpStream::connect(target).await {
            return Some(stream);
        }
    }
    None
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
