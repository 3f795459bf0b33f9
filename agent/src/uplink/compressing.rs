//! Batches being compressed while the publisher task goes on.
//!
//! A batch's JSON is compressed with zstd at a high level ([`crate::feed::batch::compress`])
//! on a blocking thread. For a tower's minute of windows that is tens of milliseconds on a
//! PC and several times that on a small ARM gateway, and the publisher task must not wait for
//! it: an alarm raised meanwhile would wait with it. So the task hands each batch here and
//! goes on publishing events, replies and health; when a batch's payload is ready (the oldest
//! first, so batches keep their order) it is submitted.
//!
//! A batch whose session ended while it was being compressed is stale: the session's end
//! cleared the ledger and rewound its records into the queue, which sends them again in the
//! next session. It is never submitted (that would send its records twice, once unbound from
//! any ledger entry).

use std::collections::VecDeque;

use tokio::task::JoinHandle;

use super::publisher::Publish;

/// How a batch's compression ended.
#[derive(Debug)]
pub(super) enum Finished {
    /// Compressed, in the session it was made for: submit it with this payload.
    Ready(Publish, Vec<u8>),
    /// The compressing thread failed (it panicked or the runtime is shutting down): its
    /// records are due again.
    Failed(Publish, String),
    /// Its session ended meanwhile: drop it (its records were rewound).
    Stale(Publish),
}

struct Pending {
    session: u64,
    publish: Publish,
    job: JoinHandle<Vec<u8>>,
}

/// The batches being compressed, oldest first.
#[derive(Default)]
pub(super) struct Compressing {
    pending: VecDeque<Pending>,
    /// Counts sessions: a batch made in an earlier one is stale.
    session: u64,
}

impl Compressing {
    /// Starts compressing `publish`'s payload (its batch JSON) on a blocking thread.
    pub(super) fn start(&mut self, mut publish: Publish) {
        let json = std::mem::take(&mut publish.payload);
        let job = tokio::task::spawn_blocking(move || crate::feed::batch::compress(&json));
        self.pending.push_back(Pending {
            session: self.session,
            publish,
            job,
        });
    }

    /// The session ended (or a new client replaced it): what is being compressed now is
    /// stale when it is ready.
    pub(super) fn session_ended(&mut self) {
        self.session = self.session.wrapping_add(1);
    }

    /// Is a batch being compressed?
    pub(super) fn is_busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The oldest batch, once its compression ended; pending forever when there is none.
    /// Cancel-safe (for `select!`): a batch leaves only once its compression has ended.
    pub(super) async fn next(&mut self) -> Finished {
        let result = match self.pending.front_mut() {
            Some(front) => (&mut front.job).await,
            None => return std::future::pending().await,
        };
        let Some(Pending {
            session, publish, ..
        }) = self.pending.pop_front()
        else {
            return std::future::pending().await;
        };
        match result {
            _ if session != self.session => Finished::Stale(publish),
            Ok(payload) => Finished::Ready(publish, payload),
            Err(e) => Finished::Failed(publish, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::ledger::Entry;
    use rumqttc::QoS;
    use std::sync::Arc;

    fn batch(items: &[&str]) -> Publish {
        let items: Vec<Vec<u8>> = items.iter().map(|s| s.as_bytes().to_vec()).collect();
        Publish {
            topic: "towerlink/v1/gw/batch".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            payload: crate::feed::batch::batch_json("gw", &items),
            entry: Entry::Batch(Arc::from(vec![1u64])),
            records: Vec::new(),
            replay: false,
            fresh: vec![1],
            compress: true,
        }
    }

    #[tokio::test]
    async fn batches_come_back_compressed_in_the_order_they_went_in() {
        let mut c = Compressing::default();
        let first = batch(&[r#"{"seq":1}"#]);
        let second = batch(&[r#"{"seq":2}"#, r#"{"seq":3}"#]);
        let json = [first.payload.clone(), second.payload.clone()];
        c.start(first);
        c.start(second);
        assert!(c.is_busy());
        for expected in json {
            match c.next().await {
                Finished::Ready(p, z) => {
                    assert!(p.compress, "the publisher counts it (batch_compressed)");
                    assert!(p.payload.is_empty());
                    let back = zstd::decode_all(z.as_slice()).expect("zstd frame");
                    assert_eq!(back, expected);
                }
                other => panic!("expected a ready batch, got {other:?}"),
            }
        }
        assert!(!c.is_busy());
    }

    #[tokio::test]
    async fn a_batch_of_an_ended_session_is_stale() {
        let mut c = Compressing::default();
        c.start(batch(&[r#"{"seq":1}"#]));
        c.session_ended();
        c.start(batch(&[r#"{"seq":2}"#]));
        assert!(matches!(c.next().await, Finished::Stale(_)));
        assert!(matches!(c.next().await, Finished::Ready(..)));
    }

    #[tokio::test]
    async fn next_is_cancel_safe() {
        let mut c = Compressing::default();
        c.start(batch(&[r#"{"seq":1}"#]));
        // Cancelled at once (another select! branch won): the batch is still there.
        let cancelled = tokio::time::timeout(std::time::Duration::ZERO, c.next()).await;
        assert!(cancelled.is_err() || matches!(cancelled, Ok(Finished::Ready(..))));
        if cancelled.is_err() {
            assert!(c.is_busy());
            assert!(matches!(c.next().await, Finished::Ready(..)));
        }
    }
}
