//! A TCP relay in front of one HTTP server (the schema registry) that can
//! be switched off: while off, open connections are cut and new ones are
//! closed at once, as when the server is down. Bytes pass unchanged.

use std::io::copy;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Switch {
    down: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

pub struct Relay {
    pub addr: std::net::SocketAddr,
    switch: Arc<Switch>,
}

impl Relay {
    /// Relays a free loopback port to `upstream` (host:port).
    pub fn start(upstream: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let switch = Arc::new(Switch::default());
        let s = switch.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if s.down.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let pairs = [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ];
                s.open.lock().unwrap().extend([client, server]);
                for (mut from, mut to) in pairs {
                    std::thread::spawn(move || {
                        let _ = copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Relay { addr, switch }
    }

    pub fn set_down(&self, down: bool) {
        self.switch.down.store(down, Ordering::SeqCst);
        if down {
            for s in self.switch.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}
