//! Checking a paid answer's receipt: it must be for exactly the job sent, prove into its batch, and the batch must
//! be signed by the advertised operator. A batch signature is recovered once and remembered ([`BatchCache`]): a
//! node signs one batch for many answers, so a client checks one signature per batch and one proof per answer.

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::Eip712Domain;

use crate::payment::Payment;
#[cfg(test)]
use crate::protocol::ReceiptMsg;
use crate::protocol::{BatchMsg, InferResponse};

/// How far a receipt's `issued_at` may be from the client's clock. A backdated receipt could already be beyond the
/// audit window (unchallengeable); a receipt dated ahead only extends the node's own exposure, but is refused too.
pub const MAX_RECEIPT_SKEW_SECS: u64 = 300;

/// A verified batch: every field it was signed over and the signature (any change is another key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Verified {
    root: B256,
    node: Address,
    count: u64,
    issued_at: u64,
    signature: [u8; 65],
    domain: B256,
}

/// Batch signatures already verified (bounded).
#[derive(Debug)]
pub(crate) struct BatchCache(moka::sync::Cache<Verified, ()>);

impl BatchCache {
    pub(crate) fn new(capacity: u64) -> Self {
        Self(moka::sync::Cache::new(capacity))
    }

    /// Whether `batch` is signed by the node it names in `domain` (recovered once per distinct batch).
    pub(crate) fn verify(&self, batch: &BatchMsg, domain: &Eip712Domain) -> bool {
        let key = Verified {
            root: batch.root,
            node: batch.node,
            count: batch.count,
            issued_at: batch.issued_at,
            signature: batch.signature,
            domain: domain_key(domain),
        };
        if self.0.contains_key(&key) {
            return true;
        }
        let ok = batch.batch().verify(&batch.signature, domain);
        if ok {
            self.0.insert(key, ());
        }
        ok
    }
}

/// What tells domains apart (chain and contract; name and version are fixed), without hashing the domain.
fn domain_key(domain: &Eip712Domain) -> B256 {
    let mut k = [0u8; 32];
    if let Some(c) = domain.verifying_contract {
        k[..20].copy_from_slice(c.as_slice());
    }
    if let Some(id) = domain.chain_id {
        k[24..].copy_from_slice(&id.saturating_to::<u64>().to_be_bytes());
    }
    k.into()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a job is, for payment and receipt checks: its input hash and its priced units.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Job {
    pub(crate) input_hash: B256,
    pub(crate) units: u64,
}

/// A paid answer must carry the node's receipt for exactly this job.
pub(crate) fn check_receipt(
    batches: &BatchCache,
    domain: &Eip712Domain,
    payment: &Payment,
    r: &InferResponse,
    job_id: B256,
    job: Job,
    operator: Address,
) -> Result<(), String> {
    let Some(receipt) = &r.receipt else { return Err("a paid answer without a receipt".into()) };
    let checks = [
        // The job id is the node's (unique per node); the answer echoes ours.
        (r.job_id == job_id, "an answer to another request"),
        (receipt.model_id == B256::from(*r.model_id.as_bytes()), "another model id than the answer"),
        (receipt.input_hash == job.input_hash, "another input hash than our inputs"),
        (receipt.output_hash == crate::protocol::tensors_hash(&r.outputs), "another output hash than the outputs"),
        (receipt.price == payment.price, "another price than advertised"),
        (receipt.units == U256::from(job.units), "another number of units than we sent"),
        (receipt.channel_id == payment.channel_id, "another channel than the one we paid on"),
        (receipt.node() == operator, "another node than the advert's operator"),
        (receipt.issued_near(unix_now(), MAX_RECEIPT_SKEW_SECS), "a time too far from now"),
        (receipt.proves_into_batch(), "a proof that does not lead to its batch's root"),
        (batches.verify(&receipt.batch, domain), "a batch signature that is not the node's"),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, what)) => Err(format!("the receipt names {what}")),
        None => Ok(()),
    }
}

/// What a paid generation was asked and may cost, for [`check_generation_receipt`].
#[derive(Clone, Debug)]
pub(crate) struct GenerationJob {
    /// The request as sent (max_tokens set).
    pub(crate) request: crate::generate::GenerateRequest,
    /// The advertised prices of each version the node may run, by weights.
    pub(crate) prices: Vec<(crate::ModelId, crate::generate::GenerationPrices)>,
}

/// A paid generation's end must carry the node's receipt for exactly this generation: the prompt tokens it reports
/// (no more than the prompt can honestly become) and our parameters and seed in the input hash, the output tokens
/// in the output hash, and the advertised per-token prices of the weights that ran for the price. Returns the price
/// charged.
pub(crate) fn check_generation_receipt(
    batches: &BatchCache,
    domain: &Eip712Domain,
    payment: &Payment,
    done: &crate::generate::GenerateDone,
    job: &GenerationJob,
    operator: Address,
) -> Result<U256, String> {
    use crate::generate::{GenerationParams, input_hash, output_hash};
    let Some(receipt) = &done.receipt else { return Err("a paid generation ended without a receipt".into()) };
    let req = &job.request;
    let max_tokens = req.max_tokens.unwrap_or(0);
    let Some((_, prices)) = job.prices.iter().find(|(id, _)| B256::from(*id.as_bytes()) == receipt.model_id) else {
        return Err("the receipt names weights the node does not advertise for this model".into());
    };
    let (prompt, output) = (done.prompt_ids.len() as u64, done.output.len() as u64);
    let params = GenerationParams {
        max_tokens,
        temperature: req.temperature,
        top_k: req.top_k,
        top_p: req.top_p,
        seed: done.seed,
        stop: req.stop.clone(),
    };
    let exact_prompt = match &req.prompt {
        crate::generate::GeneratePrompt::Ids(ids) => *ids == done.prompt_ids,
        _ => true,
    };
    let cost = prices.cost(prompt, output);
    let checks = [
        (req.seed.is_none_or(|s| s == done.seed), "another seed than ours"),
        (exact_prompt && prompt == u64::from(done.prompt_tokens), "other prompt tokens than we sent"),
        (prompt <= req.prompt_token_bound(), "more prompt tokens than our prompt can make"),
        (output <= u64::from(max_tokens), "more output tokens than max_tokens"),
        (
            receipt.input_hash == input_hash(&done.prompt_ids, &params),
            "another input hash than our prompt and parameters",
        ),
        (receipt.output_hash == output_hash(&done.output, &done.finish), "another output hash than the output"),
        (receipt.units == U256::from(prompt + output), "another number of tokens than the generation's"),
        (receipt.price == cost && cost <= payment.price, "another price than the advertised per-token prices"),
        (receipt.channel_id == payment.channel_id, "another channel than the one we paid on"),
        (receipt.node() == operator, "another node than the advert's operator"),
        (receipt.issued_near(unix_now(), MAX_RECEIPT_SKEW_SECS), "a time too far from now"),
        (receipt.proves_into_batch(), "a proof that does not lead to its batch's root"),
        (batches.verify(&receipt.batch, domain), "a batch signature that is not the node's"),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, what)) => Err(format!("the receipt names {what}")),
        None => Ok(cost),
    }
}

#[cfg(test)]
mod tests {
    use alloy::signers::local::PrivateKeySigner;

    use super::*;
    use crate::receipt::{Receipt, example_receipt as receipt};

    #[test]
    fn a_batch_is_checked_once_and_every_tampering_is_caught() {
        let node = PrivateKeySigner::random();
        let other = PrivateKeySigner::random();
        let domain = crate::eip712::domain(31337, Address::repeat_byte(0xcc));
        let receipts: Vec<Receipt> = (0..64).map(receipt).collect();
        let (_, signed) = ReceiptMsg::sign_batch(&receipts, node.address(), 1, &node, &domain).unwrap();
        let (_, other_batch) = ReceiptMsg::sign_batch(&receipts[..8], node.address(), 1, &node, &domain).unwrap();
        let cache = BatchCache::new(16);
        for r in &signed {
            assert!(r.proves_into_batch() && cache.verify(&r.batch, &domain));
        }
        cache.0.run_pending_tasks();
        assert_eq!(cache.0.entry_count(), 1, "one signature recovered for 64 answers");
        // A proof from another batch, a leaf altered in any field, a batch signed by another key.
        let mut moved = signed[3].clone();
        moved.proof = other_batch[3].proof.clone();
        assert!(!moved.proves_into_batch());
        let alter: [fn(&mut ReceiptMsg); 8] = [
            |r| r.job_id = B256::ZERO,
            |r| r.model_id = B256::ZERO,
            |r| r.input_hash = B256::ZERO,
            |r| r.output_hash = B256::ZERO,
            |r| r.units += U256::from(1u64),
            |r| r.price += U256::from(1u64),
            |r| r.channel_id = B256::ZERO,
            |r| r.issued_at += 1,
        ];
        for f in alter {
            let mut r = signed[5].clone();
            f(&mut r);
            assert!(!r.proves_into_batch(), "an altered leaf no longer proves");
        }
        let (_, forged) = ReceiptMsg::sign_batch(&receipts, node.address(), 1, &other, &domain).unwrap();
        assert!(forged[0].proves_into_batch());
        assert!(!cache.verify(&forged[0].batch, &domain), "signed by another key than the node it names");
        assert!(!forged[0].verify(&domain));
        assert!(signed[63].verify(&domain));
    }
}
