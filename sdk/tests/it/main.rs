//! Integration tests of mlbridge-sdk against real anvil (spawned from the npm-installed binary).

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod chain;
mod cli_keys;
mod support;
