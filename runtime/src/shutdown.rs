//! The one shutdown path of every service: a signal (SIGINT or SIGTERM) or a test's trigger
//! flips a watch channel, and every task that holds a [`Shutdown`] sees it.

use tokio::sync::watch;

/// Sending side: triggers shutdown for every [`Shutdown`] cloned from it.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    sender: watch::Sender<bool>,
}

/// Receiving side, cheap to clone into every task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// Creates a connected trigger and receiver.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (ShutdownTrigger { sender }, Shutdown { receiver })
}

impl ShutdownTrigger {
    /// Starts shutdown. Idempotent.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// Returns a new receiver.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }
}

impl Shutdown {
    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes once shutdown has started, or at once if it already has. Completes too when
    /// every trigger is gone, because nothing could trigger it any more.
    pub async fn wait(&mut self) {
        let _ = self.receiver.wait_for(|triggered| *triggered).await;
    }
}

/// Returns a receiver that triggers on SIGINT or SIGTERM, for a service's `main`.
pub fn on_signals() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        trigger.trigger();
    });
    shutdown
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM, only SIGINT stops the service");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_receiver_sees_trigger() {
        let (trigger, first) = channel();
        let mut second = trigger.subscribe();
        assert!(!first.is_triggered());
        trigger.trigger();
        second.wait().await;
        assert!(first.is_triggered());
    }
}
