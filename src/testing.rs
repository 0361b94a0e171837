//! Fakes for host tests (feature `testing`): drop-in replacements for this crate's services,
//! installed with `with_component_override` on [`ProcessModule::builder()`](crate::ProcessModule).

mod daemon;
pub use daemon::*;
