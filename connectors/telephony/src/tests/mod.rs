//! Tests over the shared corpus (`../shared/corpus`, or `LEADGATE_CORPUS`),
//! through the parsers and through the router with a recording sink.

mod corpus;
mod generic;
mod robustness;
mod router;
pub(crate) mod support;
