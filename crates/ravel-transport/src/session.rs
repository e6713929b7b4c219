//! The client side of exactly-once writes: a session per process, a
//! sequence number per request, and the watermark below which every
//! request has been answered or given up (see `ravel_consensus::sessions`).
//!
//! A request keeps its id across every retry and every hop (admin → node →
//! leader), so however many times it reaches a log it takes effect once.
//! Dropping the [`Ticket`] (answered, or given up at its deadline) lets the
//! watermark pass it: an attempt of it that reaches a log afterwards is
//! refused as stale instead of applied late.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use ravel_proto::metadata;
use tonic::metadata::{MetadataMap, MetadataValue};

/// One write's identity on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    pub session: u64,
    pub seq: u64,
    /// Every lower sequence number of the session is answered or abandoned.
    pub acked_below: u64,
}

impl RequestId {
    /// Adds this id to a request's metadata (`x-ravel-request`).
    pub fn insert(&self, md: &mut MetadataMap) {
        let text = format!("{:x}.{:x}.{:x}", self.session, self.seq, self.acked_below);
        if let Ok(v) = MetadataValue::try_from(text) {
            md.insert(metadata::REQUEST_ID, v);
        }
    }

    /// The id in a request's metadata: `None` if absent, an error if
    /// malformed.
    pub fn from_metadata(md: &MetadataMap) -> Result<Option<RequestId>, String> {
        let Some(v) = md.get(metadata::REQUEST_ID) else {
            return Ok(None);
        };
        let text = v
            .to_str()
            .map_err(|_| format!("{} is not ASCII", metadata::REQUEST_ID))?;
        let parts: Vec<&str> = text.split('.').collect();
        let parse = |s: &str| u64::from_str_radix(s, 16).ok();
        match parts.as_slice() {
            [s, q, a] => match (parse(s), parse(q), parse(a)) {
                (Some(session), Some(seq), Some(acked_below))
                    if session != 0 && acked_below <= seq =>
                {
                    Ok(Some(RequestId {
                        session,
                        seq,
                        acked_below,
                    }))
                }
                _ => Err(format!("malformed {}: {text:?}", metadata::REQUEST_ID)),
            },
            _ => Err(format!("malformed {}: {text:?}", metadata::REQUEST_ID)),
        }
    }
}

#[derive(Debug)]
struct Inner {
    next: u64,
    in_flight: BTreeSet<u64>,
}

/// A process's client session. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct ClientSession {
    id: u64,
    inner: Arc<Mutex<Inner>>,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSession {
    /// A new session with a random non-zero id.
    pub fn new() -> Self {
        let id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Self {
            id,
            inner: Arc::new(Mutex::new(Inner {
                next: 1,
                in_flight: BTreeSet::new(),
            })),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Starts a request; its id is valid until the ticket is dropped.
    pub fn begin(&self) -> Ticket {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = inner.next;
        inner.next += 1;
        inner.in_flight.insert(seq);
        Ticket {
            session: self.clone(),
            seq,
        }
    }

    fn acked_below(&self) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.in_flight.first().copied().unwrap_or(inner.next)
    }
}

/// One request of a session, in flight until dropped.
#[derive(Debug)]
pub struct Ticket {
    session: ClientSession,
    seq: u64,
}

impl Ticket {
    /// The id to send with (every attempt of) this request; the watermark
    /// is as of now.
    pub fn id(&self) -> RequestId {
        RequestId {
            session: self.session.id,
            seq: self.seq,
            acked_below: self.session.acked_below(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.session.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.in_flight.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_follows_the_oldest_request_in_flight() {
        let s = ClientSession::new();
        let a = s.begin();
        let b = s.begin();
        assert_eq!(a.id().acked_below, a.id().seq);
        assert_eq!(b.id().acked_below, a.id().seq);
        drop(a);
        assert_eq!(b.id().acked_below, b.id().seq);
        let b_seq = b.id().seq;
        drop(b);
        let c = s.begin();
        assert_eq!(c.id().acked_below, c.id().seq);
        assert!(c.id().seq > b_seq);
    }

    #[test]
    fn ids_roundtrip_through_metadata_and_garbage_is_refused() {
        let s = ClientSession::new();
        let t = s.begin();
        let mut md = MetadataMap::new();
        assert_eq!(RequestId::from_metadata(&md).unwrap(), None);
        t.id().insert(&mut md);
        assert_eq!(RequestId::from_metadata(&md).unwrap(), Some(t.id()));
        for bad in ["x", "1.2", "0.5.1", "1.2.3", "1.g.1"] {
            let mut md = MetadataMap::new();
            md.insert(metadata::REQUEST_ID, bad.parse().unwrap());
            assert!(RequestId::from_metadata(&md).is_err(), "{bad}");
        }
    }
}
