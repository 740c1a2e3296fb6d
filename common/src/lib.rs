//! What every ve-net tool shares: the exit-code table, the error type and its kinds,
//! the entry point, logging, stdout formats, the env-file keys (`lease`), and the
//! container naming rule.

pub mod cli;
pub mod cni;
pub mod doc;
mod error;
mod exit;
pub mod lease;
pub mod name;
pub mod netns;
pub mod notify;
pub mod output;

pub use error::{Context, Error, Kind, Result};
pub use exit::Exit;
