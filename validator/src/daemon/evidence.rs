//! Dispute evidence from gossip: whole on `mlbridge/disputes/1`, or in parts signed by the dispute's challenger on
//! `mlbridge/disputes/parts/1` when the record is larger than one gossip message (an image job's input).

use mlbridge_sdk::client::MessageAcceptance;
use mlbridge_sdk::protocol::{DisputeEvidence, EvidencePart, MAX_GOSSIP_BYTES, decode};

use super::Shared;

/// Evidence is kept for voting only for a dispute we follow, and only if its record carries the disputed receipt
/// (same node, same leaf, the node's signature) and hashes to it: the accused cannot crowd the real evidence out.
/// Evidence that is false in itself (a bad signature, a record that does not hash to its own receipt) is rejected
/// and scores its sender down; evidence about another receipt than the dispute we follow under that id (our view of
/// the chain may differ after a reorg) and evidence for a dispute not seen on chain yet are only ignored
/// (challengers gossip it again until the deadline).
pub(super) fn on_evidence(shared: &Shared, data: &[u8]) -> MessageAcceptance {
    let Ok(ev) = decode::<DisputeEvidence>(data, MAX_GOSSIP_BYTES) else { return MessageAcceptance::Reject };
    admit(shared, ev)
}

fn admit(shared: &Shared, ev: DisputeEvidence) -> MessageAcceptance {
    let Some(subject) = shared.dispute_subject(ev.dispute_id) else { return MessageAcceptance::Ignore };
    let r = &ev.record.receipt;
    if !r.verify(&shared.chain.deployment().domain()) || shared.reexec.bound(r, &ev.record).is_err() {
        shared.metrics.records_rejected.with_label_values(&["bad_evidence"]).inc();
        return MessageAcceptance::Reject;
    }
    if r.node() != subject.node || r.receipt().leaf() != subject.leaf {
        shared.metrics.records_rejected.with_label_values(&["other_receipt"]).inc();
        return MessageAcceptance::Ignore;
    }
    if !subject.has_evidence {
        shared.keep_evidence(ev);
    }
    MessageAcceptance::Accept
}

/// A part of large evidence: kept only for a dispute we follow and only if the dispute's challenger signed the
/// whole it belongs to (so nobody else can fill our buffer with parts that never complete); once every part is
/// here and the whole hashes to the signed digest, it is judged like whole evidence.
pub(super) fn on_part(shared: &Shared, data: &[u8]) -> MessageAcceptance {
    let Ok(part) = decode::<EvidencePart>(data, MAX_GOSSIP_BYTES) else { return MessageAcceptance::Reject };
    let Some(subject) = shared.dispute_subject(part.dispute_id) else { return MessageAcceptance::Ignore };
    let Some(announcer) = part.announcer() else { return MessageAcceptance::Reject };
    if announcer != subject.challenger {
        // Another dispute under this id in another view of the chain, or a forgery: not kept, not forwarded.
        return MessageAcceptance::Ignore;
    }
    if subject.has_evidence {
        return MessageAcceptance::Accept;
    }
    match shared.add_part(part) {
        super::PartAdded::Waiting => MessageAcceptance::Accept,
        super::PartAdded::Whole(ev) => match admit(shared, *ev) {
            MessageAcceptance::Accept => MessageAcceptance::Accept,
            // The challenger signed evidence that is not bound to its own dispute: forwarded no further.
            _ => MessageAcceptance::Ignore,
        },
        super::PartAdded::Broken => {
            shared.metrics.records_rejected.with_label_values(&["bad_evidence"]).inc();
            MessageAcceptance::Ignore
        }
    }
}
