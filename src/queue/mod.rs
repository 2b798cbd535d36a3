//! The Sourcegraph executor queue: wire types and the HTTP client.

pub mod client;
pub mod retry;
pub mod types;

pub use client::{ClientOptions, JobHandle, MarkOutcome, QueueClient, QueueError};
pub use retry::RetryPolicy;
