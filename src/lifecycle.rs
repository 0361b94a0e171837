//! [`Lifecycle`], the start and stop hooks of a component, and [`Lifecycles`], an ordered group
//! of them: started in order with rollback, stopped in reverse.
//!
//! The composition root adds [`Lifecycles::of_module`](crate::Lifecycles::of_module), the group of
//! every service of a [`ProcessModule`](crate::ProcessModule).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// Start and stop hooks of a component, the stand-in for Go Core's OnStartup/OnShutdown.
///
/// Every method has a default, so a component implements only what it needs. The hooks are
/// named `on_start`/`on_stop` (not `start`/`stop`) so they never clash with a service's own
/// `start` or `stop` methods on a `dyn` trait object. Service traits
/// that start or stop something have `Lifecycle` as a supertrait, so `Arc<dyn ProcessService>`
/// coerces to `Arc<dyn Lifecycle>`.
///
/// ```
/// use async_trait::async_trait;
/// use core_process::{Lifecycle, Lifecycles, Result};
/// use std::sync::{Arc, Mutex};
///
/// struct Step(&'static str, Arc<Mutex<Vec<String>>>);
///
/// #[async_trait]
/// impl Lifecycle for Step {
///     fn name(&self) -> &str { self.0 }
///     async fn on_start(&self) -> Result<()> { self.1.lock().unwrap().push(format!("start {}", self.0)); Ok(()) }
///     async fn on_stop(&self) -> Result<()> { self.1.lock().unwrap().push(format!("stop {}", self.0)); Ok(()) }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<()> {
/// let log = Arc::new(Mutex::new(Vec::new()));
/// let group = Lifecycles::new(vec![
///     Arc::new(Step("a", log.clone())),
///     Arc::new(Step("b", log.clone())),
/// ]);
/// group.start().await?;
/// group.stop().await?;
/// assert_eq!(*log.lock().unwrap(), ["start a", "start b", "stop b", "stop a"]);
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// A name for logs and errors.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Acquires what the component needs (binds, locks, spawns).
    ///
    /// # Errors
    /// Whatever the component could not acquire.
    async fn on_start(&self) -> Result<()> {
        Ok(())
    }

    /// Releases it. Must be idempotent.
    ///
    /// # Errors
    /// Whatever the component could not release.
    async fn on_stop(&self) -> Result<()> {
        Ok(())
    }
}

/// An ordered group of [`Lifecycle`]s: started in order (a failure rolls back the started ones
/// in reverse) and stopped in reverse order.
pub struct Lifecycles {
    items: Vec<Arc<dyn Lifecycle>>,
    /// How many of `items` are started.
    started: Mutex<usize>,
}

impl Lifecycles {
    /// A group of `items`, in start order.
    pub fn new(items: Vec<Arc<dyn Lifecycle>>) -> Self {
        Lifecycles {
            items,
            started: Mutex::new(0),
        }
    }

    /// Starts every component in order. If one fails, those already started are stopped in
    /// reverse order and the error is returned. Starting a started group does nothing.
    ///
    /// # Errors
    /// The first start error; rollback errors are logged.
    pub async fn start(&self) -> Result<()> {
        let mut started = self.started.lock().await;
        while *started < self.items.len() {
            let item = &self.items[*started];
            if let Err(e) = item.on_start().await {
                tracing::error!(component = item.name(), error = %e, "start failed; rolling back");
                for done in self.items[..*started].iter().rev() {
                    if let Err(stop_err) = done.on_stop().await {
                        tracing::error!(component = done.name(), error = %stop_err, "rollback stop failed");
                    }
                }
                *started = 0;
                return Err(e);
            }
            *started += 1;
        }
        Ok(())
    }

    /// Stops every started component in reverse order; every one is attempted even if an
    /// earlier one fails.
    ///
    /// # Errors
    /// The stop error, or [`Error::Multiple`] when several failed.
    pub async fn stop(&self) -> Result<()> {
        let mut started = self.started.lock().await;
        let mut errors = Vec::new();
        for item in self.items[..*started].iter().rev() {
            if let Err(e) = item.on_stop().await {
                tracing::error!(component = item.name(), error = %e, "stop failed");
                errors.push(e);
            }
        }
        *started = 0;
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Multiple(errors)),
        }
    }
}

impl std::fmt::Debug for Lifecycles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|i| i.name()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    struct Step {
        name: &'static str,
        fail_start: bool,
        log: Arc<StdMutex<Vec<String>>>,
    }

    #[async_trait]
    impl Lifecycle for Step {
        fn name(&self) -> &str {
            self.name
        }
        async fn on_start(&self) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("start {}", self.name));
            if self.fail_start {
                return Err(Error::NotConfigured {
                    component: self.name.into(),
                    setting: "anything: refused to start",
                });
            }
            Ok(())
        }
        async fn on_stop(&self) -> Result<()> {
            self.log.lock().unwrap().push(format!("stop {}", self.name));
            Ok(())
        }
    }

    fn step(
        name: &'static str,
        fail_start: bool,
        log: &Arc<StdMutex<Vec<String>>>,
    ) -> Arc<dyn Lifecycle> {
        Arc::new(Step {
            name,
            fail_start,
            log: log.clone(),
        })
    }

    #[tokio::test]
    async fn failed_start_rolls_back_in_reverse() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![
            step("a", false, &log),
            step("b", false, &log),
            step("c", true, &log),
            step("d", false, &log),
        ]);
        let err = group.start().await.unwrap_err();
        assert!(err.to_string().contains("refused"));
        assert_eq!(
            *log.lock().unwrap(),
            ["start a", "start b", "start c", "stop b", "stop a"]
        );
        // Nothing is left started: stop does nothing.
        group.stop().await.unwrap();
        assert_eq!(log.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn stop_is_reverse_and_idempotent() {
        let log = Arc::new(StdMutex::new(Vec::new()));
        let group = Lifecycles::new(vec![step("a", false, &log), step("b", false, &log)]);
        group.start().await.unwrap();
        group.start().await.unwrap();
        group.stop().await.unwrap();
        group.stop().await.unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["start a", "start b", "stop b", "stop a"]
        );
    }
}
