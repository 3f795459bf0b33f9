//! The clean-shutdown signal every long-running task listens to.
//!
//! One [`ShutdownSender`] is held by the agent's main task; every task holds a [`Shutdown`]
//! and finishes what it is doing (flush windows, publish `offline`) when it fires.

use tokio::sync::watch;

/// Fires shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownSender(watch::Sender<bool>);

/// A task's view of the shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new shutdown signal.
pub fn channel() -> (ShutdownSender, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownSender(tx), Shutdown(rx))
}

impl ShutdownSender {
    /// Tells every task to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }

    /// Another receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Has shutdown been fired?
    pub fn is_shutdown(&self) -> bool {
        *self.0.borrow()
    }

    /// Sleeps for `delay`, or less if shutdown fires meanwhile (a retry loop's back-off must
    /// never hold up a clean stop).
    pub async fn sleep(&mut self, delay: std::time::Duration) {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.recv() => {}
        }
    }

    /// Waits until shutdown is fired (returns at once if it already was).
    pub async fn recv(&mut self) {
        // An error means the sender is gone: that is a shutdown too.
        let _ = self.0.wait_for(|v| *v).await;
    }
}
