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

/// A part of large evidence: checked on arrival against the announcement the dispute's challenger signed (bound to
/// this chain, this `Disputes`, the dispute, the node and the receipt): a malformed part, or one whose bytes do not
/// hash to the announced hash, is rejected; a well-formed part signed by someone else is ignored. Kept only for a
/// dispute we follow, for a model we hold, until the evidence is here; a part already held is ignored (not forwarded again). Once every part is here, the whole is
/// judged like whole evidence.
pub(super) fn on_part(shared: &Shared, data: &[u8]) -> MessageAcceptance {
    let Ok(part) = decode::<EvidencePart>(data, MAX_GOSSIP_BYTES) else { return MessageAcceptance::Reject };
    let id = part.dispute_id;
    let Some(subject) = shared.dispute_subject(id) else { return MessageAcceptance::Ignore };
    let Some((announcement, signer)) = part.check(&shared.evidence_subject(id, &subject)) else {
        shared.metrics.records_rejected.with_label_values(&["bad_evidence"]).inc();
        return MessageAcceptance::Reject;
    };
    if !subject.model_held || subject.has_evidence {
        // Not needed here: forwarded if it is the challenger's, else dropped.
        return if signer == subject.challenger { MessageAcceptance::Accept } else { MessageAcceptance::Ignore };
    }
    match shared.add_part(announcement, signer, part) {
        // Well formed but not our dispute's challenger's: another view of the chain (a reorg) can make an honest
        // relayer's part look so, so it is not held against it; it is not kept or forwarded either.
        super::PartAdded::NotChallengers => {
            shared.metrics.records_rejected.with_label_values(&["other_receipt"]).inc();
            MessageAcceptance::Ignore
        }
        super::PartAdded::Waiting => MessageAcceptance::Accept,
        super::PartAdded::Redundant => MessageAcceptance::Ignore,
        super::PartAdded::Complete(announcement, slots) => {
            let whole = EvidencePart::join(&slots).filter(|ev| ev.dispute_id == id);
            match whole.map(|ev| admit(shared, ev)) {
                Some(MessageAcceptance::Accept) => {
                    shared.kept_from_parts(id, announcement);
                    MessageAcceptance::Accept
                }
                // The challenger signed evidence that is not valid evidence for its own dispute.
                _ => {
                    shared.metrics.records_rejected.with_label_values(&["bad_evidence"]).inc();
                    shared.parts_failed(id, announcement);
                    MessageAcceptance::Ignore
                }
            }
        }
    }
}
