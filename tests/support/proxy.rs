//! A TCP proxy on a loopback port between the daemon and a peer (the
//! database), which a test can cut: the server gone (open connections
//! closed, new ones closed at once) or a partition (open connections
//! frozen, new ones held unanswered), until it is restored. More exact than
//! stopping the server, and stopping cannot imitate a partition.

use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Forward everything.
    Open,
    /// The server is gone: close open connections; close new ones at once.
    Refuse,
    /// A partition: open connections stop forwarding (nothing is closed);
    /// new ones are accepted and never answered.
    Blackhole,
}

struct Inner {
    mode: Cut,
    /// The tasks of the connections open now (forwarding, frozen or held).
    conns: Vec<AbortHandle>,
    accepted: u64,
}

#[derive(Clone)]
pub struct Proxy {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
    frozen: watch::Sender<bool>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            inner: Arc::new(Mutex::new(Inner {
                mode: Cut::Open,
                conns: Vec::new(),
                accepted: 0,
            })),
            frozen: watch::channel(false).0,
        };
        let p = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut inner = p.lock();
                inner.accepted += 1;
                inner.conns.retain(|h| !h.is_finished());
                match inner.mode {
                    Cut::Refuse => drop(client),
                    Cut::Blackhole => {
                        let task = tokio::spawn(async move {
                            let _held = client;
                            std::future::pending::<()>().await;
                        });
                        inner.conns.push(task.abort_handle());
                    }
                    Cut::Open => {
                        let mut frozen = p.frozen.subscribe();
                        let task = tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await
                            else {
                                return;
                            };
                            let mut client = client;
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = async { drop(frozen.wait_for(|f| *f).await) } => {
                                    // Hold both sockets, forward nothing.
                                    std::future::pending::<()>().await;
                                }
                            }
                        });
                        inner.conns.push(task.abort_handle());
                    }
                }
            }
        });
        proxy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cut the link the way `how` says.
    pub fn cut(&self, how: Cut) {
        let mut inner = self.lock();
        inner.mode = how;
        match how {
            Cut::Blackhole => {
                self.frozen.send_replace(true);
            }
            Cut::Refuse | Cut::Open => {
                // Closing what is open: a server that died, or a partition
                // that healed after the peer dropped its side.
                for h in inner.conns.drain(..) {
                    h.abort();
                }
                self.frozen.send_replace(false);
            }
        }
    }

    /// Forward again; connections from before are closed.
    pub fn restore(&self) {
        self.cut(Cut::Open);
    }

    /// Connections accepted so far (a reconnect storm shows here).
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }
}
