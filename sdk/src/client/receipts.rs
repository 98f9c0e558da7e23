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
    ];
    first_failed(&checks).or_else(|| signed_for(batches, domain, payment, receipt, operator)).map_or(Ok(()), Err)
}

/// What every paid answer's receipt must show besides its job: our channel, the advert's operator, a time near
/// ours, a proof into its batch and the node's signature on the batch (recovered once per batch). The first that
/// fails, as a reason.
fn signed_for(
    batches: &BatchCache,
    domain: &Eip712Domain,
    payment: &Payment,
    receipt: &crate::protocol::ReceiptMsg,
    operator: Address,
) -> Option<String> {
    first_failed(&[
        (receipt.channel_id == payment.channel_id, "another channel than the one we paid on"),
        (receipt.node() == operator, "another node than the advert's operator"),
        (receipt.issued_near(unix_now(), MAX_RECEIPT_SKEW_SECS), "a time too far from now"),
        (receipt.proves_into_batch(), "a proof that does not lead to its batch's root"),
        (batches.verify(&receipt.batch, domain), "a batch signature that is not the node's"),
    ])
}

fn first_failed(checks: &[(bool, &str)]) -> Option<String> {
    checks.iter().find(|(ok, _)| !ok).map(|(_, what)| format!("the receipt names {what}"))
}

/// What a paid generation was asked and may cost, for [`check_generation_receipt`].
#[derive(Clone, Debug)]
pub(crate) struct GenerationJob {
    /// The request as sent (max_tokens set).
    pub(crate) request: crate::generate::GenerateRequest,
    /// The advertised prices of each version the node may run, by weights.
    pub(crate) prices: Vec<(crate::ModelId, crate::generate::GenerationPrices)>,
}

impl GenerationJob {
    /// The most this generation costs with `output` tokens on any of its versions, its prompt at its bound.
    pub(crate) fn cost_bound(&self, output: u64) -> U256 {
        let prompt = self.request.prompt_token_bound();
        self.prices.iter().map(|(_, p)| p.cost(prompt, output)).max().unwrap_or_default()
    }
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
    we_cancelled: bool,
) -> Result<U256, String> {
    use crate::generate::{GenerationParams, input_hash, output_hash};
    let Some(receipt) = &done.receipt else {
        // We cancelled it before its first token: nothing produced, nothing charged. Or the weights that ran are
        // advertised free.
        let free = done
            .model
            .as_ref()
            .and_then(|m| m.id)
            .is_some_and(|id| job.prices.iter().any(|(advertised, p)| *advertised == id && p.is_free()));
        if (we_cancelled && done.finish == "cancelled" && done.output.is_empty()) || free {
            return Ok(U256::ZERO);
        }
        return Err("a paid generation ended without a receipt".into());
    };
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
        // Only we cancel: a node ending an answer early as `cancelled` would be paid for a truncation no validator
        // can tell from a real cancel.
        (we_cancelled || done.finish != "cancelled", "a cancel we did not make"),
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
    ];
    first_failed(&checks).or_else(|| signed_for(batches, domain, payment, receipt, operator)).map_or(Ok(cost), Err)
}

#[cfg(test)]
mod tests {
    use alloy::signers::local::PrivateKeySigner;

    use super::*;
    use crate::receipt::{Receipt, example_receipt as receipt};

    /// A node's honest end of a paid generation: 5 prompt tokens, 3 output tokens, at 10 / 40 wei per token.
    fn generation(
        node: &PrivateKeySigner,
        domain: &Eip712Domain,
        edit: impl Fn(&mut crate::generate::GenerateDone, &mut Receipt),
    ) -> (crate::generate::GenerateDone, GenerationJob, Payment) {
        use crate::generate::*;
        let model = crate::ModelId::of_bytes(b"weights");
        let request = GenerateRequest {
            max_tokens: Some(4),
            seed: Some(9),
            ..GenerateRequest::new(
                crate::protocol::ModelRef { name: "m".into(), version: None, id: None },
                GeneratePrompt::Text("hello".into()),
            )
        };
        let prices = GenerationPrices { input_wei: U256::from(10u64), output_wei: U256::from(40u64) };
        let payment = Payment {
            payee: node.address(),
            price: prices.cost(request.prompt_token_bound(), 4),
            channel_id: B256::repeat_byte(5),
            voucher: None,
        };
        let mut done = GenerateDone {
            finish: "length".into(),
            prompt_tokens: 5,
            output: vec![11, 12, 13],
            seed: 9,
            prompt_ids: vec![1, 2, 3, 4, 5],
            model: None,
            receipt: None,
        };
        let params = GenerationParams { max_tokens: 4, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 9, stop: vec![] };
        let mut receipt = Receipt {
            modelId: B256::from(*model.as_bytes()),
            inputHash: input_hash(&done.prompt_ids, &params),
            outputHash: output_hash(&done.output, &done.finish),
            units: U256::from(8u64),
            price: prices.cost(5, 3),
            channelId: payment.channel_id,
            issuedAt: unix_now(),
            ..receipt(1)
        };
        edit(&mut done, &mut receipt);
        let signed = ReceiptMsg::sign_single(&receipt, node.address(), node, domain).unwrap();
        done.receipt = Some(Box::new(signed));
        (done, GenerationJob { request, prices: vec![(model, prices)] }, payment)
    }

    #[test]
    fn a_generation_receipt_must_charge_what_was_produced_at_the_advertised_prices() {
        use crate::generate::{GenerationParams, input_hash};
        let node = PrivateKeySigner::random();
        let domain = crate::eip712::domain(31337, Address::repeat_byte(0xcc));
        let cache = BatchCache::new(16);
        let check = |edit: &dyn Fn(&mut crate::generate::GenerateDone, &mut Receipt)| {
            let (done, job, payment) = generation(&node, &domain, edit);
            check_generation_receipt(&cache, &domain, &payment, &done, &job, node.address(), false)
        };
        assert_eq!(check(&|_, _| {}), Ok(U256::from(5 * 10 + 3 * 40)), "an honest end");
        let params =
            |seed| GenerationParams { max_tokens: 4, temperature: 0.0, top_k: 0, top_p: 1.0, seed, stop: vec![] };
        // Each lie, signed by the node itself, is refused.
        type Lie<'a> = &'a dyn Fn(&mut crate::generate::GenerateDone, &mut Receipt);
        let lies: [(&str, Lie<'_>); 9] = [
            ("a cancel we did not make", &|d, r| {
                d.finish = "cancelled".into();
                r.outputHash = crate::generate::output_hash(&d.output, &d.finish);
            }),
            ("a dearer price", &|_, r| r.price += U256::from(1u64)),
            ("more units", &|_, r| r.units += U256::from(1u64)),
            ("another seed", &|d, r| {
                d.seed = 10;
                r.inputHash = input_hash(&d.prompt_ids, &params(10));
            }),
            ("inflated prompt", &|d, r| {
                // 200 prompt tokens for a 5-byte prompt, consistently hashed and priced.
                d.prompt_ids = vec![1; 200];
                d.prompt_tokens = 200;
                r.inputHash = input_hash(&d.prompt_ids, &params(9));
                r.units = U256::from(203u64);
                r.price = U256::from(200 * 10 + 3 * 40u64);
            }),
            ("more than max_tokens", &|d, r| {
                d.output.extend([14, 15]);
                r.outputHash = crate::generate::output_hash(&d.output, &d.finish);
                r.units = U256::from(10u64);
                r.price = U256::from(5 * 10 + 5 * 40u64);
            }),
            ("another output", &|d, _| d.output[0] = 99),
            ("other weights", &|_, r| r.modelId = B256::repeat_byte(8)),
            ("another channel", &|_, r| r.channelId = B256::repeat_byte(6)),
        ];
        for (what, lie) in lies {
            assert!(check(lie).is_err(), "{what} passed");
        }
        // The same `cancelled` end is good when we did cancel: it charges what was produced.
        let (done, job, payment) = generation(&node, &domain, lies[0].1);
        let ours = check_generation_receipt(&cache, &domain, &payment, &done, &job, node.address(), true);
        assert_eq!(ours, Ok(U256::from(5 * 10 + 3 * 40)));
        // No receipt at all, and a receipt signed by another key than the advert's operator.
        let (mut done, job, payment) =
            generation(&node, &domain, |_: &mut crate::generate::GenerateDone, _: &mut Receipt| {});
        let signed = done.receipt.take();
        assert!(check_generation_receipt(&cache, &domain, &payment, &done, &job, node.address(), false).is_err());
        done.receipt = signed;
        assert!(
            check_generation_receipt(&cache, &domain, &payment, &done, &job, Address::repeat_byte(1), false).is_err()
        );
        // An empty `cancelled` end without a receipt costs nothing only when we cancelled.
        (done.receipt, done.finish, done.output) = (None, "cancelled".into(), vec![]);
        assert!(check_generation_receipt(&cache, &domain, &payment, &done, &job, node.address(), false).is_err());
        let ours = check_generation_receipt(&cache, &domain, &payment, &done, &job, node.address(), true);
        assert_eq!(ours, Ok(U256::ZERO));
    }

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
