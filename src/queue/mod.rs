//! The Sourcegraph executor queue: wire types and the HTTP client.

pub mod client;
pub mod run_key;
pub mod types;

pub use crate::retry::RetryPolicy;
pub use client::{ClientOptions, JobHandle, MarkOutcome, QueueClient, QueueError};
pub use run_key::RunKey;
