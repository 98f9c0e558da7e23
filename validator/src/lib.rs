//! # mlbridge-validator
//!
//! The validator process: it stakes in `Staking`, samples a share of the receipts nodes gossip, fetches their
//! inputs through the audit protocol, re-executes them with the node's own inference code (`mlbridge-node` as a
//! library, so both sides run identical code), compares outputs within the model's `validation.max_abs_diff`,
//! attests per epoch to earn fees, and opens disputes on mismatches (DESIGN.md §1, §4).
//!
//! Today the crate provides [`compare`], the output comparison rule re-execution will use; sampling, attestation and
//! disputes arrive with the validator issue.

pub mod compare;
