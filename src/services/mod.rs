//! The component traits host applications resolve from [`ProcessModule`](crate::ProcessModule),
//! and their implementations.

#[cfg(feature = "control")]
pub mod control;
pub mod daemon;
pub mod event_bus;
pub mod health;
pub mod pid_lock;
pub mod process;
pub mod registry;
pub mod runner;
pub mod supervise;
