//! Helpers shared by the ML Bridge integration tests.
//!
//! [`Proxy`]: a TCP proxy that can simulate an outage of whatever is behind it (the chain RPC in the tests).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// A TCP proxy in front of the RPC; `set_down(true)` cuts every connection and refuses new ones.
pub struct Proxy {
    /// Where the proxy listens.
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    kill: broadcast::Sender<()>,
}

impl Proxy {
    /// Listen on 127.0.0.1 and forward every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (kill, _) = broadcast::channel(16);
        let (down2, kill2) = (down.clone(), kill.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if down2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut killed = kill2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = killed.recv() => {}
                    }
                });
            }
        });
        Self { addr, down, kill }
    }

    /// `http://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Simulate an outage (`true`: cut every connection, refuse new ones) or end it.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            let _ = self.kill.send(());
        }
    }
}
