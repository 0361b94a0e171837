//! The component traits host applications resolve from [`ProcessModule`](crate::ProcessModule),
//! and their implementations.

pub mod event_bus;
pub mod process_service;
