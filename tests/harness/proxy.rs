//! A TCP proxy on loopback that a test can cut and heal: the network partition of the
//! fault tests. While cut, existing connections are closed and new ones are accepted and
//! closed at once, so the client sees its calls fail the way a broken link fails them.
//! While stalled, connections stay open but no byte moves in either direction (a link
//! that silently drops packets), until the stall ends.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A cuttable proxy to one upstream address.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    cut: AtomicBool,
    /// While set, open connections carry nothing: bytes read wait until it clears.
    stalled: AtomicBool,
    stop: AtomicBool,
    /// Incremented by every cut: connections of an older generation close themselves.
    generation: AtomicU64,
    sockets: Mutex<Vec<TcpStream>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            upstream,
            cut: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            sockets: Mutex::new(Vec::new()),
        });
        let accept = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(&listener, &accept));
        Proxy { addr, shared }
    }

    /// The proxy's URL, for the client side.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the link: closes every connection and refuses new traffic until [`Proxy::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        for socket in self.shared.sockets.lock().expect("sockets lock").drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Heals the link.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Stalls the link: connections stay open and new ones are accepted, but no byte is
    /// forwarded until [`Proxy::resume`]; nothing is lost, it arrives late.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// Ends a stall: held bytes move on.
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.stalled.store(false, Ordering::SeqCst);
        self.cut();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(shared.upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let generation = shared.generation.load(Ordering::SeqCst);
                {
                    let mut sockets = shared.sockets.lock().expect("sockets lock");
                    for s in [&client, &upstream] {
                        if let Ok(clone) = s.try_clone() {
                            sockets.push(clone);
                        }
                    }
                }
                pipe(
                    client.try_clone(),
                    upstream.try_clone(),
                    Arc::clone(shared),
                    generation,
                );
                pipe(Ok(upstream), Ok(client), Arc::clone(shared), generation);
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Copies `from` to `to` on a thread until either side closes or the link is cut.
fn pipe(
    from: std::io::Result<TcpStream>,
    to: std::io::Result<TcpStream>,
    shared: Arc<Shared>,
    generation: u64,
) {
    let (Ok(mut from), Ok(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            while shared.stalled.load(Ordering::SeqCst)
                && shared.generation.load(Ordering::SeqCst) == generation
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            if shared.generation.load(Ordering::SeqCst) != generation
                || to.write_all(&buf[..n]).is_err()
            {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
