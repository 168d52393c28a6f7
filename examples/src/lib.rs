//! Shared code of the rdask examples.

pub mod deconv;
