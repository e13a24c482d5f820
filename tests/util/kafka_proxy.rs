//! A TCP proxy in front of one Kafka broker that can play two faults on
//! cue: the broker unreachable (connections cut and refused), and Metadata
//! requests that name topics answered with an empty broker list, the answer
//! a KRaft broker gives for the moment it is fenced after a pause longer
//! than its session (requests for all topics still see the broker). Every
//! other byte passes through unchanged. The broker must
//! advertise the proxy's address, so clients keep talking through it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Metadata's API key; its answers are flexible (compact arrays) from v9.
const METADATA: i16 = 3;
const FIRST_FLEXIBLE: i16 = 9;

#[derive(Default)]
struct Switch {
    strip: AtomicBool,
    stripped: AtomicU64,
    down: AtomicBool,
    /// Both ends of every open connection, to cut them when going down.
    open: Mutex<Vec<TcpStream>>,
}

pub struct MetadataProxy {
    switch: Arc<Switch>,
}

impl MetadataProxy {
    /// Listens on `listener` and forwards each connection to `upstream`.
    pub fn start(listener: TcpListener, upstream: String) -> MetadataProxy {
        let switch = Arc::new(Switch::default());
        let s = switch.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if s.down.load(Ordering::SeqCst) {
                    continue; // closed at once
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut open = s.open.lock().unwrap();
                open.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                connect(client, server, s.clone());
            }
        });
        MetadataProxy { switch }
    }

    /// While on, every Metadata answer lists no broker.
    pub fn strip_brokers(&self, on: bool) {
        self.switch.strip.store(on, Ordering::SeqCst);
    }

    /// While down, open connections are cut and new ones closed at once:
    /// the broker is unreachable, as while it is paused.
    pub fn set_down(&self, down: bool) {
        self.switch.down.store(down, Ordering::SeqCst);
        if down {
            for s in self.switch.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Metadata answers sent without brokers so far.
    pub fn stripped(&self) -> u64 {
        self.switch.stripped.load(Ordering::SeqCst)
    }
}

/// Correlation id → version of the Metadata requests awaiting an answer
/// that name their topics (requests for every topic are left alone).
type Pending = Arc<Mutex<HashMap<i32, i16>>>;

fn connect(client: TcpStream, server: TcpStream, switch: Arc<Switch>) {
    let pending: Pending = Arc::default();
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let p = pending.clone();
    std::thread::spawn(move || {
        pump(client, server, |frame| {
            if frame.len() >= 8 && i16::from_be_bytes([frame[0], frame[1]]) == METADATA {
                let version = i16::from_be_bytes([frame[2], frame[3]]);
                let id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                if version < FIRST_FLEXIBLE || names_topics(frame) {
                    p.lock().unwrap().insert(id, version);
                }
            }
            None
        })
    });
    std::thread::spawn(move || {
        pump(s2, c2, |frame| {
            let id = i32::from_be_bytes(frame.get(..4)?.try_into().ok()?);
            let version = pending.lock().unwrap().remove(&id)?;
            if version < FIRST_FLEXIBLE || !switch.strip.load(Ordering::SeqCst) {
                return None;
            }
            let stripped = without_brokers(frame)?;
            switch.stripped.fetch_add(1, Ordering::SeqCst);
            Some(stripped)
        })
    });
}

/// Copies size-prefixed frames from `from` to `to`; `edit` may replace one.
fn pump(mut from: TcpStream, mut to: TcpStream, mut edit: impl FnMut(&[u8]) -> Option<Vec<u8>>) {
    loop {
        let mut size = [0u8; 4];
        if from.read_exact(&mut size).is_err() {
            break;
        }
        let mut frame = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
        if from.read_exact(&mut frame).is_err() {
            break;
        }
        let frame = edit(&frame).unwrap_or(frame);
        let size = (frame.len() as i32).to_be_bytes();
        if to
            .write_all(&size)
            .and_then(|_| to.write_all(&frame))
            .is_err()
        {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Whether a flexible Metadata request (header v2) names its topics; a
/// null topic array asks for all of them.
fn names_topics(frame: &[u8]) -> bool {
    let Some(client_id) = frame.get(8..10) else {
        return false;
    };
    let len = i16::from_be_bytes([client_id[0], client_id[1]]).max(0) as usize;
    let mut at = 10 + len;
    skip_tags(frame, &mut at).is_some() && uvarint(frame, &mut at).is_some_and(|n| n != 0)
}

/// A flexible Metadata answer (header v1) with its broker array emptied.
fn without_brokers(frame: &[u8]) -> Option<Vec<u8>> {
    let mut at = 4; // correlation id
    skip_tags(frame, &mut at)?;
    at += 4; // throttle_time_ms
    let brokers_at = at;
    let n = uvarint(frame, &mut at)?.checked_sub(1)?;
    for _ in 0..n {
        at += 4; // node_id
        let host = uvarint(frame, &mut at)?.checked_sub(1)?;
        at += host as usize + 4; // host, port
        let rack = uvarint(frame, &mut at)?;
        at += rack.saturating_sub(1) as usize; // rack (0: null)
        skip_tags(frame, &mut at)?;
    }
    let rest = frame.get(at..)?;
    let mut out = frame[..brokers_at].to_vec();
    out.push(1); // a compact array of 0 entries
    out.extend_from_slice(rest);
    Some(out)
}

fn skip_tags(frame: &[u8], at: &mut usize) -> Option<()> {
    for _ in 0..uvarint(frame, at)? {
        uvarint(frame, at)?;
        let size = uvarint(frame, at)?;
        *at += size as usize;
    }
    Some(())
}

fn uvarint(frame: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *frame.get(*at)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
