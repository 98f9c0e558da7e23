//! The ML Bridge wire protocol: versioned names and the CBOR messages peers exchange.
//!
//! - Request-response protocol [`INFER_PROTOCOL`]: an [`InferRequest`] (model, named tensors, optional voucher) or an
//!   [`EmbedRequest`] (texts) is answered by an [`InferResponse`]: outputs with the node's signed receipt, or a typed
//!   [`ProtocolError`] (never a dropped stream). A node answers a gossiped [`JobOffer`] by sending its [`Bid`] to the
//!   offering client over the same protocol ([`Request::Bid`], acknowledged with [`Response::Ack`]).
//! - Gossipsub topics: [`ADVERTS_TOPIC`] carries [`Advert`]s (a node's models, prices, load), [`jobs_topic`] carries
//!   [`JobOffer`]s for one model, [`RECEIPTS_TOPIC`] carries [`ReceiptMsg`]s for validators, [`DISPUTES_TOPIC`]
//!   carries validators' [`DisputeEvidence`].
//! - The audit protocol: a validator's signed [`AuditRequest`] on [`INFER_PROTOCOL`] is answered with the job's
//!   [`AuditRecord`] (only for active validators in `Staking`).
//!
//! Every message is CBOR. [`decode`] refuses input over the message's size limit *before* parsing, and any bytes
//! give a value or an error, never a panic (property-tested).

use alloy::primitives::{Address, B256, U256};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{ModelId, Tensor};

/// Request-response protocol for inference and bids.
pub const INFER_PROTOCOL: &str = "/mlbridge/infer/1";
/// Gossipsub topic of node adverts.
pub const ADVERTS_TOPIC: &str = "mlbridge/adverts/1";
/// Gossipsub topic of inference receipts.
pub const RECEIPTS_TOPIC: &str = "mlbridge/receipts/2";
/// Gossipsub topic of dispute evidence ([`DisputeEvidence`]), between validators.
pub const DISPUTES_TOPIC: &str = "mlbridge/disputes/1";
/// Gossipsub topic of dispute evidence too large for one gossip message, in signed parts ([`EvidencePart`]).
pub const EVIDENCE_PARTS_TOPIC: &str = "mlbridge/disputes/parts/1";
/// Largest dispute evidence sent in parts (the encoded [`DisputeEvidence`]).
pub const MAX_EVIDENCE_BYTES: usize = 8 << 20;
/// Evidence bytes per part (the part hashes, signature and gossip envelope fit in the rest of a gossip message).
pub const EVIDENCE_PART_BYTES: usize = 48 << 10;
/// Wire version carried inside every message; a peer refuses other versions with a typed error.
pub const WIRE_VERSION: u16 = 1;

/// Largest inference request (inputs included).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Largest inference response.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Largest gossip message (adverts, job offers, receipts).
pub const MAX_GOSSIP_BYTES: usize = 64 << 10;

/// The gossipsub topic of job offers for one model.
pub fn jobs_topic(model: &ModelId) -> String {
    format!("mlbridge/jobs/{model}/1")
}

/// Which model a request is for: by name (and version) as served, or pinned to exact weights by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Served name.
    pub name: String,
    /// Version (`None` = the node's latest).
    pub version: Option<u64>,
    /// Require exactly these weights (the node refuses if its model differs).
    pub id: Option<ModelId>,
}

/// A payer's voucher as carried on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireVoucher {
    /// Channel.
    pub channel_id: B256,
    /// Cumulative amount, wei.
    pub cumulative_amount: U256,
    /// 65-byte signature (r, s, v).
    #[serde(with = "serde_bytes65")]
    pub signature: [u8; 65],
}

/// A request on [`INFER_PROTOCOL`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Run an inference (client to node).
    Infer(InferRequest),
    /// Embed texts with a text-embedding model (client to node).
    Embed(EmbedRequest),
    /// A quote for a gossiped job offer (node to the offering client).
    Bid(Bid),
    /// Fetch the inputs and outputs of a recent paid job (validator to node, the audit protocol).
    Audit(AuditRequest),
    /// Made by the codec for bytes that are no request (undecodable or over the limit); never sent on the wire.
    /// Lets the receiver answer with a typed error and penalise the sender.
    #[serde(skip)]
    Malformed(String),
    /// Made by the codec when the node's budget of inbound bytes being read is used up; never sent on the wire.
    /// The receiver answers "overloaded" without reading the request.
    #[serde(skip)]
    Busy,
}

/// Embed `texts` with a text-embedding model; the answer holds one FP32 tensor `embedding` of shape [N, D].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedRequest {
    /// Wire version ([`WIRE_VERSION`]).
    pub version: u16,
    /// Client-chosen job id.
    pub job_id: B256,
    /// The model.
    pub model: ModelRef,
    /// Texts to embed.
    pub texts: Vec<String>,
    /// Payment for this job (required by paid nodes unless `channel` has credit).
    pub voucher: Option<WireVoucher>,
    /// Charge the job to the credit vouchers already paid ahead on this channel (DESIGN.md §3, payment intervals);
    /// a voucher, when attached, names its own channel.
    #[serde(default)]
    pub channel: Option<B256>,
    /// The payer's secret credit key: credit paid ahead is spent only by requests carrying the key its voucher came
    /// with (without one, the requester's peer id stands in).
    #[serde(default)]
    pub credit_key: Option<B256>,
}

impl Request {
    /// Attach the payer's credit key (inference and embedding requests).
    pub fn set_credit_key(&mut self, key: B256) {
        match self {
            Self::Infer(r) => r.credit_key = Some(key),
            Self::Embed(r) => r.credit_key = Some(key),
            _ => {}
        }
    }

    /// The wire version the sender speaks.
    pub fn version(&self) -> u16 {
        match self {
            Self::Infer(r) => r.version,
            Self::Embed(r) => r.version,
            Self::Bid(b) => b.version,
            Self::Audit(a) => a.version,
            Self::Malformed(_) | Self::Busy => WIRE_VERSION,
        }
    }
}

/// Run `inputs` through `model`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferRequest {
    /// Wire version ([`WIRE_VERSION`]).
    pub version: u16,
    /// Client-chosen job id (unique per client; receipts name it).
    pub job_id: B256,
    /// The model.
    pub model: ModelRef,
    /// Named tensors, batch dimension first.
    pub inputs: Vec<Tensor>,
    /// Payment for this job (required by paid nodes unless `channel` has credit).
    pub voucher: Option<WireVoucher>,
    /// Charge the job to the credit vouchers already paid ahead on this channel (DESIGN.md §3, payment intervals);
    /// a voucher, when attached, names its own channel.
    #[serde(default)]
    pub channel: Option<B256>,
    /// The payer's secret credit key: credit paid ahead is spent only by requests carrying the key its voucher came
    /// with (without one, the requester's peer id stands in).
    #[serde(default)]
    pub credit_key: Option<B256>,
    /// Most milliseconds the request may wait in the node's queue; past it the node answers "overloaded" without
    /// running it (the client's queue-phase timeout).
    #[serde(default)]
    pub queue_timeout_ms: Option<u32>,
}

/// A response on [`INFER_PROTOCOL`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The inference ran.
    Infer(Box<InferResponse>),
    /// A bid was received.
    Ack,
    /// The record of an audited job.
    Audit(std::sync::Arc<AuditRecord>),
    /// The request was refused or failed.
    Error(ProtocolError),
}

/// The input name under which an image classifier takes an encoded image (JPEG or PNG) instead of its pixels.
pub const IMAGE_INPUT: &str = "image";

/// The tensor that carries an encoded image (JPEG or PNG) to an image classifier: one `UINT8` row `[1, n]` of the
/// file's bytes, one sample. The node decodes and preprocesses it as the model's config says; the receipt's input
/// hash is over this tensor, so over the file as sent.
pub fn image_tensor(bytes: Vec<u8>) -> Tensor {
    let n = bytes.len() as i64;
    Tensor::new(IMAGE_INPUT, vec![1, n], crate::TensorData::Uint8(bytes)).expect("one row of n bytes")
}

/// A class of an image classifier's answer, with its probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    /// Class index (position in the model's output).
    pub index: u32,
    /// Its name, from the node's labels.
    pub label: String,
    /// Its probability.
    pub score: f32,
}

/// Outputs of an inference, with the node's receipt when the job was paid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    /// Wire version.
    pub version: u16,
    /// The job.
    pub job_id: B256,
    /// The weights that ran.
    pub model_id: ModelId,
    /// Outputs in the model's order.
    pub outputs: Vec<Tensor>,
    /// The node's signed receipt (paid jobs).
    pub receipt: Option<ReceiptMsg>,
    /// An image classifier's most probable classes, named (for an encoded image): the names are the node's word,
    /// the indices and scores come from its output, which the receipt covers. Empty for other jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassScore>,
}

/// Why a request failed; the client can act on the kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The node does not serve this model (or these weights).
    UnknownModel,
    /// Inputs do not match the model (names, datatypes, shapes, batch).
    BadInput,
    /// The model's queue is full: try another node.
    Overloaded,
    /// Payment missing or refused (top up, wrong channel, price changed...).
    Payment,
    /// A wire version this node does not speak.
    UnsupportedVersion,
    /// The message could not be decoded or is over the size limit.
    Malformed,
    /// The node failed; nothing the client did.
    Internal,
    /// No such record (an audited job older than the node's retention).
    NotFound,
    /// The node does not serve this to this peer (audits are for its validators only).
    Forbidden,
}

/// A typed error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
    /// Why a payment was refused (with [`ErrorKind::Payment`]).
    #[serde(default)]
    pub payment: Option<PaymentRefusal>,
}

impl ProtocolError {
    /// An error of `kind` without payment detail.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), payment: None }
    }
}

/// Why a node refused a job's payment. Each case says what the payer can do about it. No work was done and nothing
/// was recorded for a refused job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PaymentRefusal {
    /// The job carries no voucher and the node is paid.
    #[error(
        "this node is paid: attach a voucher of at least {price} wei more than your last one on a channel to {payee}"
    )]
    Required {
        /// The model's price, wei.
        price: U256,
        /// Who to open a channel to (the node's operator).
        payee: Address,
    },
    /// The node knows no channel with this id.
    #[error("channel {channel} does not exist on this node's chain; open a channel to {payee} first")]
    UnknownChannel {
        /// The channel.
        channel: B256,
        /// The node's operator.
        payee: Address,
    },
    /// The channel exists but is not confirmed deeply enough yet.
    #[error("channel {channel} has {have} of {need} confirmations; retry in a few blocks")]
    Unconfirmed {
        /// The channel.
        channel: B256,
        /// Confirmations so far.
        have: u64,
        /// Confirmations the node needs.
        need: u64,
    },
    /// The channel pays someone else (another node's channel).
    #[error("channel {channel} pays {payee}, not this node ({node}); use a channel to {node}")]
    WrongPayee {
        /// The channel.
        channel: B256,
        /// Its payee.
        payee: Address,
        /// This node's operator.
        node: Address,
    },
    /// The voucher was not signed by the channel's payer.
    #[error(
        "the voucher for channel {channel} is signed by {signer}, not the channel's payer {payer}; sign with the payer key"
    )]
    BadSignature {
        /// The channel.
        channel: B256,
        /// Who signed (zero if unrecoverable).
        signer: Address,
        /// The channel's payer.
        payer: Address,
    },
    /// The voucher was already accepted.
    #[error("voucher {amount} on channel {channel} was already used; sign a new one of at least {needed} wei")]
    Replayed {
        /// The channel.
        channel: B256,
        /// The replayed amount.
        amount: U256,
        /// The smallest amount the node accepts now.
        needed: U256,
    },
    /// The voucher's cumulative amount is below one already accepted.
    #[error(
        "voucher {amount} on channel {channel} is below the {accepted} wei already accepted; sign at least {needed} wei"
    )]
    BelowAccepted {
        /// The channel.
        channel: B256,
        /// The voucher's amount.
        amount: U256,
        /// The highest accepted amount.
        accepted: U256,
        /// The smallest amount the node accepts now.
        needed: U256,
    },
    /// The voucher adds less than the job's price (the price may have changed).
    #[error(
        "voucher {amount} on channel {channel} does not cover the price; the node needs at least {needed} wei (price {price})"
    )]
    Underpaid {
        /// The channel.
        channel: B256,
        /// The voucher's amount.
        amount: U256,
        /// The smallest amount the node accepts.
        needed: U256,
        /// The model's price now.
        price: U256,
    },
    /// The voucher asks for more than the channel's confirmed deposit.
    #[error("voucher {amount} on channel {channel} is over its confirmed deposit of {deposit} wei; top the channel up")]
    OverDeposit {
        /// The channel.
        channel: B256,
        /// The voucher's amount.
        amount: U256,
        /// The confirmed deposit.
        deposit: U256,
    },
    /// The channel closes or expires too soon for the node to redeem safely.
    #[error(
        "channel {channel} stops being redeemable at unix time {deadline}, too soon to accept work; open a new channel"
    )]
    Expiring {
        /// The channel.
        channel: B256,
        /// Unix seconds of its redemption deadline.
        deadline: u64,
    },
    /// The node's last attempt to redeem this channel was refused on chain; it accepts no more work on it.
    #[error("channel {channel} cannot be settled by this node now ({reason}); pay on another channel")]
    Unsettleable {
        /// The channel.
        channel: B256,
        /// What the contract said.
        reason: String,
    },
    /// The job came without a voucher and the credit paid ahead on its channel does not cover it.
    #[error(
        "the credit paid ahead on channel {channel} does not cover this job; attach a voucher of at least {needed} wei"
    )]
    NoCredit {
        /// The channel.
        channel: B256,
        /// The smallest cumulative amount the node accepts now.
        needed: U256,
    },
    /// The node cannot check payments at the moment (its own fault, not the voucher's).
    #[error("this node cannot check payments right now ({reason}); retry later or use another node")]
    Unavailable {
        /// What went wrong on the node.
        reason: String,
    },
}

impl PaymentRefusal {
    /// Whether waiting (a few blocks) could make the same voucher acceptable.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unconfirmed { .. } | Self::Unavailable { .. })
    }
}

/// Ask a node for the inputs and outputs of one of its recent paid jobs ([`Request::Audit`]).
///
/// Signed by a validator key: the node serves it only if the signer is an active validator in `Staking`, the
/// request names the very peer that sent it (a copied request is useless to anyone else) and it is recent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRequest {
    /// Wire version.
    pub version: u16,
    /// The job (from its receipt).
    pub job_id: B256,
    /// The validator asking (its staked address).
    pub validator: Address,
    /// libp2p PeerId bytes of the peer sending the request.
    pub requester: Vec<u8>,
    /// Unix seconds when signed.
    pub issued_at: u64,
    /// The validator's EIP-191 signature over the request with this field empty.
    pub signature: Vec<u8>,
}

/// How far an audit request's `issued_at` may be from the node's clock.
pub const MAX_AUDIT_SKEW_SECS: u64 = 120;

impl AuditRequest {
    fn signing_hash(&self) -> B256 {
        let mut unsigned = self.clone();
        unsigned.signature = Vec::new();
        alloy::primitives::keccak256(encode(&unsigned))
    }

    /// A request for `job_id`, sent by peer `requester`, signed by the validator key `signer`.
    pub fn signed<S: alloy::signers::SignerSync>(
        job_id: B256,
        requester: &[u8],
        issued_at: u64,
        signer: &S,
        validator: Address,
    ) -> crate::Result<Self> {
        let mut req = Self {
            version: WIRE_VERSION,
            job_id,
            validator,
            requester: requester.to_vec(),
            issued_at,
            signature: Vec::new(),
        };
        let sig = signer
            .sign_message_sync(req.signing_hash().as_slice())
            .map_err(|e| crate::Error::Signature(e.to_string()))?;
        req.signature = sig.as_bytes().to_vec();
        Ok(req)
    }

    /// Check the request came from `sender` (PeerId bytes), is recent at `now_secs`, and is signed by the validator
    /// it names. Says what is wrong otherwise.
    pub fn verify(&self, sender: &[u8], now_secs: u64) -> Result<Address, String> {
        if self.requester != sender {
            return Err("the audit request names another peer than the one that sent it".into());
        }
        if self.issued_at.abs_diff(now_secs) > MAX_AUDIT_SKEW_SECS {
            return Err(format!(
                "the audit request was signed at unix time {}, more than {MAX_AUDIT_SKEW_SECS} s from now ({now_secs})",
                self.issued_at
            ));
        }
        let sig = alloy::primitives::Signature::try_from(self.signature.as_slice())
            .map_err(|_| "the audit request carries no valid signature".to_owned())?;
        match sig.recover_address_from_msg(self.signing_hash().as_slice()) {
            Ok(a) if a == self.validator => Ok(a),
            _ => Err(format!("the audit request is not signed by {}", self.validator)),
        }
    }
}

/// A validator's evidence for an open dispute, gossiped on [`DISPUTES_TOPIC`] so every validator can re-execute
/// the job and vote: the node's own audit record (signed receipt, inputs, outputs). Voters check both hashes against
/// the receipt before trusting it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DisputeEvidence {
    /// Wire version.
    pub version: u16,
    /// The dispute's id in `Disputes`.
    pub dispute_id: u64,
    /// libp2p PeerId bytes of the accused node (voters may audit it themselves).
    pub node_peer: Vec<u8>,
    /// The job's record as the node served it.
    pub record: AuditRecord,
}

/// One part of a [`DisputeEvidence`] too large for one gossip message. Every part carries the hashes of all parts
/// and the challenger's signature over them, bound to the deployment, the dispute, the accused node and the disputed
/// receipt ([`EvidencePart::announcement`]): a voter checks each part on arrival, so nobody but the dispute's own
/// challenger can put a byte into what it assembles, and no part from another chain or dispute fits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvidencePart {
    /// Wire version.
    pub version: u16,
    /// The dispute's id in `Disputes`.
    pub dispute_id: u64,
    /// Length of the whole encoded [`DisputeEvidence`], bytes.
    pub total_len: u32,
    /// This part's index (parts hold [`EVIDENCE_PART_BYTES`] each, the last one the rest).
    pub index: u32,
    /// keccak256 of every part's bytes, in order.
    pub part_hashes: Vec<B256>,
    /// The challenger's signature (its validator key) over [`EvidencePart::announcement`].
    #[serde(with = "serde_bytes65")]
    pub signature: [u8; 65],
    /// The part's bytes.
    #[serde(with = "serde_byte_buf")]
    pub bytes: Vec<u8>,
}

/// What the parts of one piece of evidence are about: the chain, the `Disputes` contract, the dispute, the accused
/// node and the disputed receipt's leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvidenceSubject {
    /// Chain id.
    pub chain_id: u64,
    /// The `Disputes` contract.
    pub disputes: Address,
    /// The dispute's id.
    pub dispute_id: u64,
    /// The accused node.
    pub node: Address,
    /// The disputed receipt's leaf.
    pub leaf: B256,
}

impl EvidencePart {
    /// What the challenger signs: the subject, the whole's length and every part's hash.
    pub fn announcement(subject: &EvidenceSubject, total_len: u32, part_hashes: &[B256]) -> B256 {
        let mut buf = Vec::with_capacity(160 + 32 * part_hashes.len());
        buf.extend_from_slice(b"mlbridge evidence parts v1");
        buf.extend_from_slice(&subject.chain_id.to_be_bytes());
        buf.extend_from_slice(subject.disputes.as_slice());
        buf.extend_from_slice(&subject.dispute_id.to_be_bytes());
        buf.extend_from_slice(subject.node.as_slice());
        buf.extend_from_slice(subject.leaf.as_slice());
        buf.extend_from_slice(&total_len.to_be_bytes());
        for h in part_hashes {
            buf.extend_from_slice(h.as_slice());
        }
        alloy::primitives::keccak256(buf)
    }

    /// Split `evidence` (about `subject`) into signed parts (`None` when larger than [`MAX_EVIDENCE_BYTES`]).
    pub fn split(
        evidence: &DisputeEvidence,
        subject: &EvidenceSubject,
        signer: &crate::signer::FastSigner,
    ) -> Option<Vec<EvidencePart>> {
        let whole = encode(evidence);
        if whole.len() > MAX_EVIDENCE_BYTES {
            return None;
        }
        let total_len = whole.len() as u32;
        let part_hashes: Vec<B256> = whole.chunks(EVIDENCE_PART_BYTES).map(alloy::primitives::keccak256).collect();
        let signature = signer.sign_digest(&Self::announcement(subject, total_len, &part_hashes)).as_bytes();
        let parts = whole
            .chunks(EVIDENCE_PART_BYTES)
            .enumerate()
            .map(|(i, chunk)| EvidencePart {
                version: WIRE_VERSION,
                dispute_id: subject.dispute_id,
                total_len,
                index: i as u32,
                part_hashes: part_hashes.clone(),
                signature,
                bytes: chunk.to_vec(),
            })
            .collect();
        Some(parts)
    }

    /// How many parts a whole of `total_len` bytes has.
    pub fn count_for(total_len: usize) -> usize {
        total_len.div_ceil(EVIDENCE_PART_BYTES)
    }

    /// Check the part against `subject` (its dispute id must be the subject's): a length within
    /// [`MAX_EVIDENCE_BYTES`], one hash per part, an index within them, exactly the bytes that index holds and that
    /// hash. Returns the announcement and who signed it (the caller compares with the dispute's challenger).
    pub fn check(&self, subject: &EvidenceSubject) -> Option<(B256, Address)> {
        let total = self.total_len as usize;
        if self.version != WIRE_VERSION
            || self.dispute_id != subject.dispute_id
            || total == 0
            || total > MAX_EVIDENCE_BYTES
        {
            return None;
        }
        let count = Self::count_for(total);
        let index = self.index as usize;
        if self.part_hashes.len() != count || index >= count {
            return None;
        }
        let start = index.checked_mul(EVIDENCE_PART_BYTES)?;
        if self.bytes.len() != (total - start).min(EVIDENCE_PART_BYTES)
            || alloy::primitives::keccak256(&self.bytes) != self.part_hashes[index]
        {
            return None;
        }
        let announcement = Self::announcement(subject, self.total_len, &self.part_hashes);
        let sig = alloy::primitives::Signature::try_from(self.signature.as_slice()).ok()?;
        sig.recover_address_from_prehash(&announcement).ok().map(|signer| (announcement, signer))
    }

    /// Put checked parts back together: the whole evidence, if every part is here and the bytes decode.
    pub fn join(parts: &[Option<Vec<u8>>]) -> Option<DisputeEvidence> {
        let mut whole = Vec::new();
        for p in parts {
            whole.extend_from_slice(p.as_deref()?);
        }
        decode(&whole, MAX_EVIDENCE_BYTES).ok()
    }
}

/// A node's record of a paid job: its signed receipt and the exact tensors, so a validator can re-execute it and
/// check both hashes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Wire version.
    pub version: u16,
    /// The signed receipt.
    pub receipt: ReceiptMsg,
    /// Served model name and version.
    pub model: ModelRef,
    /// The job's inputs (texts of an embedding job are in `texts`).
    pub inputs: Vec<Tensor>,
    /// Texts of an embedding job.
    pub texts: Vec<String>,
    /// The outputs the node returned.
    pub outputs: Vec<Tensor>,
    /// A text generation's prompt tokens, parameters and output tokens (its inputs and outputs are empty).
    #[serde(default)]
    pub generation: Option<crate::generate::GenerationAudit>,
}

/// sha256 of the canonical bytes of `tensors` (a receipt's input or output hash).
pub fn tensors_hash(tensors: &[Tensor]) -> B256 {
    use sha2::{Digest, Sha256};
    let mut bytes = Vec::new();
    for t in tensors {
        t.canonical_bytes(&mut bytes);
    }
    B256::from(<[u8; 32]>::from(Sha256::digest(&bytes)))
}

/// sha256 of texts, each length-prefixed (the input hash of an embedding job).
pub fn texts_hash(texts: &[String]) -> B256 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    B256::from(<[u8; 32]>::from(h.finalize()))
}

/// A client's open-market offer, gossiped on the model's jobs topic (signed by the client's peer key, which is
/// where bids are sent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOffer {
    /// Wire version.
    pub version: u16,
    /// The job.
    pub job_id: B256,
    /// Exact weights wanted.
    pub model_id: ModelId,
    /// sha256 of the canonical input bytes.
    pub input_hash: B256,
    /// Size of the inputs in bytes.
    pub input_bytes: u64,
    /// Most the client pays, wei.
    pub max_price_wei: U256,
    /// Unix seconds after which the offer lapses.
    pub deadline_unix: u64,
}

/// A node's quote for a job offer, sent to the offering client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// Wire version.
    pub version: u16,
    /// The job.
    pub job_id: B256,
    /// Price asked, wei.
    pub price_wei: U256,
    /// Expected latency from the node's queue, milliseconds.
    pub expected_latency_ms: u32,
    /// The model served (name and version) for the follow-up request.
    pub model: ModelRef,
}

/// One model in an advert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertModel {
    /// The weights.
    pub model_id: ModelId,
    /// Served name.
    pub name: String,
    /// Served version.
    pub version: u64,
    /// Price per inference, wei.
    pub price_wei: U256,
    /// Requests queued now.
    pub queue_depth: u32,
    /// A text-generation model's price per prompt token, wei (`price_wei` is then per generated token). `None` for
    /// models that take tensors or texts.
    #[serde(default)]
    pub input_token_price_wei: Option<U256>,
}

/// A node's periodic advert on [`ADVERTS_TOPIC`], signed by its operator key (binding PeerId and operator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// Wire version.
    pub version: u16,
    /// libp2p PeerId bytes of the node.
    pub peer_id: Vec<u8>,
    /// Operator address (staked, signs receipts).
    pub operator: Address,
    /// Models served.
    pub models: Vec<AdvertModel>,
    /// Requests one peer may have in flight at this node (its `max_inbound_per_peer`; beyond it: "overloaded").
    /// Self-reported, so informational only: clients route by what they measure, never by this.
    pub capacity: u32,
    /// Multiaddrs (binary) the node can be dialled at.
    pub addrs: Vec<Vec<u8>>,
    /// Unix milliseconds when issued (peers drop stale adverts).
    pub issued_at_ms: u64,
    /// Operator's signature over the advert with this field empty.
    pub signature: Vec<u8>,
}

impl Advert {
    fn signing_hash(&self) -> B256 {
        let mut unsigned = self.clone();
        unsigned.signature = Vec::new();
        alloy::primitives::keccak256(encode(&unsigned))
    }

    /// Sign as the operator (EIP-191 over the keccak of the advert's CBOR with an empty signature).
    pub fn sign<S: alloy::signers::SignerSync>(mut self, signer: &S) -> crate::Result<Self> {
        let sig = signer
            .sign_message_sync(self.signing_hash().as_slice())
            .map_err(|e| crate::Error::Signature(e.to_string()))?;
        self.signature = sig.as_bytes().to_vec();
        Ok(self)
    }

    /// Whether the operator signed this advert and it was published by the peer it names.
    pub fn verify(&self, publisher: &[u8]) -> bool {
        if self.peer_id != publisher || self.version != WIRE_VERSION {
            return false;
        }
        let Ok(sig) = alloy::primitives::Signature::try_from(self.signature.as_slice()) else { return false };
        sig.recover_address_from_msg(self.signing_hash().as_slice()).is_ok_and(|a| a == self.operator)
    }
}

impl ReceiptMsg {
    /// The EIP-712 receipt it carries (the Merkle leaf's preimage).
    pub fn receipt(&self) -> crate::receipt::Receipt {
        crate::receipt::Receipt {
            jobId: self.job_id,
            modelId: self.model_id,
            inputHash: self.input_hash,
            outputHash: self.output_hash,
            units: self.units,
            price: self.price,
            channelId: self.channel_id,
            issuedAt: self.issued_at,
        }
    }

    /// The node operator that signed the batch.
    pub fn node(&self) -> Address {
        self.batch.node
    }

    /// `receipt` as leaf `proof` of the signed `batch`.
    pub fn new(receipt: &crate::receipt::Receipt, proof: Vec<B256>, batch: BatchMsg) -> Self {
        Self {
            version: WIRE_VERSION,
            job_id: receipt.jobId,
            model_id: receipt.modelId,
            input_hash: receipt.inputHash,
            output_hash: receipt.outputHash,
            units: receipt.units,
            price: receipt.price,
            channel_id: receipt.channelId,
            issued_at: receipt.issuedAt,
            proof,
            batch,
        }
    }

    /// Sign `receipt` alone as the node operator `node`: a batch of one (root = leaf, empty proof).
    pub fn sign_single<S: alloy::signers::SignerSync>(
        receipt: &crate::receipt::Receipt,
        node: Address,
        signer: &S,
        domain: &alloy::sol_types::Eip712Domain,
    ) -> crate::Result<Self> {
        let batch = crate::receipt::ReceiptBatch {
            root: receipt.leaf(),
            node,
            count: U256::from(1u64),
            issuedAt: receipt.issuedAt,
        };
        let signature = batch.sign(signer, domain)?;
        Ok(Self::new(receipt, Vec::new(), BatchMsg::new(&batch, signature)))
    }

    /// Sign `receipts` as one batch (at most [`crate::receipt::MAX_BATCH_LEAVES`]) as the node operator `node`,
    /// dated `issued_at`: the signed batch and each receipt with its proof, in order.
    pub fn sign_batch<S: alloy::signers::SignerSync>(
        receipts: &[crate::receipt::Receipt],
        node: Address,
        issued_at: u64,
        signer: &S,
        domain: &alloy::sol_types::Eip712Domain,
    ) -> crate::Result<(BatchMsg, Vec<Self>)> {
        if receipts.len() > crate::receipt::MAX_BATCH_LEAVES {
            return Err(crate::Error::Signature(format!(
                "a batch holds at most {} receipts, not {}",
                crate::receipt::MAX_BATCH_LEAVES,
                receipts.len()
            )));
        }
        let tree = crate::receipt::MerkleTree::new(receipts.iter().map(crate::receipt::Receipt::leaf).collect())?;
        let batch = crate::receipt::ReceiptBatch {
            root: tree.root(),
            node,
            count: U256::from(receipts.len()),
            issuedAt: issued_at,
        };
        let msg = BatchMsg::new(&batch, batch.sign(signer, domain)?);
        let signed = receipts.iter().enumerate().map(|(i, r)| Self::new(r, tree.proof(i), msg.clone())).collect();
        Ok((msg, signed))
    }

    /// Whether the receipt proves into the batch root and the batch is signed by the node it names.
    pub fn verify(&self, domain: &alloy::sol_types::Eip712Domain) -> bool {
        self.proves_into_batch() && self.batch.batch().verify(&self.batch.signature, domain)
    }

    /// Whether the receipt's leaf proves into its batch's root (the signature is not checked).
    pub fn proves_into_batch(&self) -> bool {
        self.version == WIRE_VERSION
            && self.proof.len() <= crate::receipt::MAX_PROOF_LEN
            && crate::receipt::process_proof(&self.proof, self.receipt().leaf()) == self.batch.root
    }

    /// The evidence `Disputes.challenge` takes for this receipt: leaf fields, proof, batch and its signature.
    pub fn evidence(&self) -> crate::chain::bindings::Disputes::Evidence {
        crate::chain::bindings::Disputes::Evidence {
            receipt: (&self.receipt()).into(),
            proof: self.proof.clone(),
            batch: (&self.batch.batch()).into(),
            batchSignature: alloy::primitives::Bytes::copy_from_slice(&self.batch.signature),
        }
    }

    /// Whether `issued_at` is within `skew_secs` of `now_secs`. A receipt dated in the past could be beyond the audit
    /// window (unchallengeable) before anyone sees it, so clients refuse receipts that are not current.
    pub fn issued_near(&self, now_secs: u64, skew_secs: u64) -> bool {
        self.issued_at.abs_diff(now_secs) <= skew_secs
    }
}

impl BatchMsg {
    /// A signed batch on the wire.
    pub fn new(batch: &crate::receipt::ReceiptBatch, signature: [u8; 65]) -> Self {
        Self {
            root: batch.root,
            node: batch.node,
            count: batch.count.saturating_to(),
            issued_at: batch.issuedAt,
            signature,
        }
    }

    /// The EIP-712 batch the node signed.
    pub fn batch(&self) -> crate::receipt::ReceiptBatch {
        crate::receipt::ReceiptBatch {
            root: self.root,
            node: self.node,
            count: U256::from(self.count),
            issuedAt: self.issued_at,
        }
    }
}

/// Receipts of one signed batch, gossiped on [`RECEIPTS_TOPIC`] for validators: the batch, every leaf of it (so the
/// root can be rebuilt and each receipt's proof derived) and the receipts `first..first + receipts.len()`. A batch
/// whose receipts do not fit one gossip message goes in several ([`ReceiptBatchGossip::split`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptBatchGossip {
    /// Wire version.
    pub version: u16,
    /// The signed batch.
    pub batch: BatchMsg,
    /// Every leaf of the batch, in order.
    pub leaves: Vec<B256>,
    /// Index of the first receipt carried.
    pub first: u32,
    /// The receipts carried (proof and batch left out: they follow from `leaves` and `batch`).
    pub receipts: Vec<ReceiptMsg>,
}

impl ReceiptBatchGossip {
    /// Messages carrying `receipts` (leaf index and receipt, in leaf order) of `batch`, whose every leaf is
    /// `leaves`, each within [`MAX_GOSSIP_BYTES`] (a message carries a run of consecutive leaves).
    pub fn split(batch: &BatchMsg, leaves: &[B256], receipts: &[(usize, crate::receipt::Receipt)]) -> Vec<Self> {
        let bare = |r: &crate::receipt::Receipt| ReceiptMsg::new(r, Vec::new(), batch.clone());
        let make = |run: &[(usize, crate::receipt::Receipt)]| Self {
            version: WIRE_VERSION,
            batch: batch.clone(),
            leaves: leaves.to_vec(),
            first: run.first().map_or(0, |(i, _)| *i as u32),
            receipts: run.iter().map(|(_, r)| bare(r)).collect(),
        };
        let mut out = Vec::new();
        // Runs of consecutive leaves, then halved until one message fits (leaves are bounded by MAX_BATCH_LEAVES).
        for run in receipts.chunk_by(|(a, _), (b, _)| a + 1 == *b) {
            let mut per = run.len().max(1);
            while per > 1 && encode(&make(&run[..per.min(run.len())])).len() > MAX_GOSSIP_BYTES {
                per = per.div_ceil(2);
            }
            out.extend(run.chunks(per).map(make));
        }
        out
    }

    /// The receipts carried, each with its proof and the batch, if the leaves build the batch's root and each
    /// receipt is the leaf it claims to be. The batch signature is not checked here (once per batch, by the caller:
    /// `batch.batch().verify(..)`).
    pub fn receipts(&self) -> Result<Vec<ReceiptMsg>, &'static str> {
        if self.version != WIRE_VERSION {
            return Err("version");
        }
        if self.leaves.is_empty()
            || self.leaves.len() > crate::receipt::MAX_BATCH_LEAVES
            || self.leaves.len() as u64 != self.batch.count
        {
            return Err("count");
        }
        let tree = crate::receipt::MerkleTree::new(self.leaves.clone()).map_err(|_| "count")?;
        if tree.root() != self.batch.root {
            return Err("root");
        }
        let first = self.first as usize;
        if first.checked_add(self.receipts.len()).is_none_or(|end| end > self.leaves.len()) {
            return Err("index");
        }
        self.receipts
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let receipt = r.receipt();
                if receipt.leaf() != self.leaves[first + i] {
                    return Err("leaf");
                }
                Ok(ReceiptMsg::new(&receipt, tree.proof(first + i), self.batch.clone()))
            })
            .collect()
    }
}

/// A node-signed receipt on the wire: the job's EIP-712 [`crate::receipt::Receipt`], its Merkle proof and the
/// signed batch it belongs to (DESIGN.md §3). This is the evidence `Disputes.challenge` takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptMsg {
    /// Wire version.
    pub version: u16,
    /// The job (assigned by the node, unique per node).
    pub job_id: B256,
    /// The weights that ran.
    pub model_id: B256,
    /// sha256 of the canonical inputs.
    pub input_hash: B256,
    /// sha256 of the canonical outputs.
    pub output_hash: B256,
    /// Units of work priced (samples, texts, tokens).
    pub units: U256,
    /// Price charged for the job, wei.
    pub price: U256,
    /// The payment channel charged (zero for a free job).
    pub channel_id: B256,
    /// When the node answered, unix seconds (disputes are possible for the audit window after it).
    pub issued_at: u64,
    /// Merkle proof of the receipt's leaf in the batch (empty for a batch of one).
    pub proof: Vec<B256>,
    /// The signed batch.
    pub batch: BatchMsg,
}

/// A node-signed receipt batch on the wire: EIP-712 `ReceiptBatch` plus the operator's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMsg {
    /// Merkle root of the batch's receipt leaves.
    pub root: B256,
    /// Node operator address.
    pub node: Address,
    /// Number of receipts in the batch.
    pub count: u64,
    /// When the batch was signed, unix seconds.
    pub issued_at: u64,
    /// 65-byte EIP-712 signature of the operator.
    #[serde(with = "serde_bytes65")]
    pub signature: [u8; 65],
}

/// Wire encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The message is over its limit; it was not parsed.
    #[error("message of {size} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// CBOR-encode a message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(msg, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}

/// Decode a message, refusing more than `limit` bytes before parsing anything.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { size: bytes.len(), limit });
    }
    ciborium::from_reader(bytes).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// `Vec<u8>` as a CBOR byte string (not an array of numbers, which takes up to twice the room).
mod serde_byte_buf {
    use serde::Serializer;
    use serde::de::{Deserializer, Visitor};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

mod serde_bytes65 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 65], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 65], D::Error> {
        let v: serde_bytes_buf::Buf = Deserialize::deserialize(d)?;
        v.0.as_slice().try_into().map_err(|_| serde::de::Error::invalid_length(v.0.len(), &"65 bytes"))
    }

    /// A byte buffer that deserializes from CBOR byte strings (and, leniently, arrays of numbers).
    mod serde_bytes_buf {
        use serde::de::{Deserializer, SeqAccess, Visitor};

        pub(crate) struct Buf(pub(crate) Vec<u8>);

        impl<'de> serde::Deserialize<'de> for Buf {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Buf;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Buf, E> {
                        Ok(Buf(v.to_vec()))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf, A::Error> {
                        let mut out = Vec::new();
                        while let Some(b) = seq.next_element::<u8>()? {
                            if out.len() >= 65 {
                                return Err(serde::de::Error::invalid_length(out.len() + 1, &"65 bytes"));
                            }
                            out.push(b);
                        }
                        Ok(Buf(out))
                    }
                }
                d.deserialize_bytes(V)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::TensorData;

    fn tensor() -> impl Strategy<Value = Tensor> {
        (prop::collection::vec(1i64..4, 1..3), any::<bool>()).prop_flat_map(|(shape, fp)| {
            let n = shape.iter().product::<i64>() as usize;
            if fp {
                prop::collection::vec(-1e6f32..1e6, n)
                    .prop_map(move |v| Tensor::new("x", shape.clone(), TensorData::Fp32(v)).unwrap())
                    .boxed()
            } else {
                prop::collection::vec(any::<i64>(), n)
                    .prop_map(move |v| Tensor::new("ids", shape.clone(), TensorData::Int64(v)).unwrap())
                    .boxed()
            }
        })
    }

    fn b256() -> impl Strategy<Value = B256> {
        any::<[u8; 32]>().prop_map(B256::from)
    }

    proptest! {
        #[test]
        fn infer_requests_round_trip(
            job in b256(), name in "[a-z-]{1,12}", version in proptest::option::of(any::<u64>()),
            inputs in prop::collection::vec(tensor(), 0..3), amount in any::<u128>(), sig in any::<[u8; 32]>(),
        ) {
            let mut signature = [0u8; 65];
            signature[..32].copy_from_slice(&sig);
            let req = Request::Infer(InferRequest {
                version: WIRE_VERSION,
                job_id: job,
                model: ModelRef { name, version, id: Some(ModelId::of_bytes(&sig)) },
                inputs,
                voucher: Some(WireVoucher { channel_id: job, cumulative_amount: U256::from(amount), signature }),
                channel: None,
                credit_key: None,
                queue_timeout_ms: Some(250),
            });
            let bytes = encode(&req);
            prop_assert_eq!(decode::<Request>(&bytes, MAX_REQUEST_BYTES).unwrap(), req);
        }

        #[test]
        fn gossip_messages_round_trip(job in b256(), price in any::<u128>(), depth in any::<u32>(), peer in prop::collection::vec(any::<u8>(), 0..40)) {
            let id = ModelId::of_bytes(job.as_slice());
            let advert = Advert {
                version: WIRE_VERSION,
                peer_id: peer,
                operator: Address::repeat_byte(3),
                models: vec![AdvertModel { model_id: id, name: "m".into(), version: 2, price_wei: U256::from(price), queue_depth: depth, input_token_price_wei: None }],
                capacity: 256,
                addrs: vec![vec![4, 127, 0, 0, 1]],
                issued_at_ms: 1,
                signature: vec![7; 65],
            };
            prop_assert_eq!(decode::<Advert>(&encode(&advert), MAX_GOSSIP_BYTES).unwrap(), advert);
            let offer = JobOffer { version: WIRE_VERSION, job_id: job, model_id: id, input_hash: job, input_bytes: 9, max_price_wei: U256::from(price), deadline_unix: 5 };
            prop_assert_eq!(decode::<JobOffer>(&encode(&offer), MAX_GOSSIP_BYTES).unwrap(), offer);
            let resp = Response::Error(ProtocolError::new(ErrorKind::Overloaded, "busy"));
            prop_assert_eq!(decode::<Response>(&encode(&resp), MAX_RESPONSE_BYTES).unwrap(), resp);
        }

        /// Any bytes decode to a value or an error, never a panic (the decoder's fuzz property).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode::<Request>(&bytes, MAX_REQUEST_BYTES);
            let _ = decode::<Response>(&bytes, MAX_RESPONSE_BYTES);
            let _ = decode::<Advert>(&bytes, MAX_GOSSIP_BYTES);
            let _ = decode::<JobOffer>(&bytes, MAX_GOSSIP_BYTES);
            let _ = decode::<ReceiptMsg>(&bytes, MAX_GOSSIP_BYTES);
            let _ = decode::<DisputeEvidence>(&bytes, MAX_GOSSIP_BYTES);
        }

        /// Mutating a valid message never panics either (closer to what a fuzzer explores).
        #[test]
        fn mutated_messages_never_panic(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let req = Request::Infer(InferRequest {
                version: WIRE_VERSION, job_id: B256::ZERO,
                model: ModelRef { name: "mlp-tiny".into(), version: Some(1), id: None },
                inputs: vec![Tensor::new("input", vec![1, 4], TensorData::Fp32(vec![0.5; 4])).unwrap()],
                voucher: None,
                channel: None,
                credit_key: None,
                queue_timeout_ms: None,
            });
            let mut bytes = encode(&req);
            for (i, b) in flips {
                let n = bytes.len();
                bytes[i % n] = b;
            }
            let _ = decode::<Request>(&bytes, MAX_REQUEST_BYTES);
        }
    }

    #[test]
    fn adverts_bind_operator_and_peer() {
        let operator = alloy::signers::local::PrivateKeySigner::random();
        let advert = Advert {
            version: WIRE_VERSION,
            peer_id: vec![1, 2, 3],
            operator: operator.address(),
            models: vec![],
            capacity: 8,
            addrs: vec![],
            issued_at_ms: 5,
            signature: vec![],
        }
        .sign(&operator)
        .unwrap();
        assert!(advert.verify(&[1, 2, 3]));
        assert!(!advert.verify(&[9]), "published by another peer");
        let mut forged = advert.clone();
        forged.capacity = 9999;
        assert!(!forged.verify(&[1, 2, 3]), "tampered");
        let mut other = advert;
        other.operator = Address::repeat_byte(1);
        assert!(!other.verify(&[1, 2, 3]), "claims another operator");
    }

    #[test]
    fn large_evidence_travels_in_parts_each_checked_on_arrival() {
        let node = alloy::signers::local::PrivateKeySigner::random();
        let receipt = crate::receipt::Receipt {
            jobId: B256::repeat_byte(1),
            modelId: B256::repeat_byte(2),
            inputHash: B256::repeat_byte(3),
            outputHash: B256::repeat_byte(4),
            units: U256::from(1u64),
            price: U256::from(5u64),
            channelId: B256::ZERO,
            issuedAt: 1,
        };
        let domain = alloy::sol_types::Eip712Domain::default();
        let signed = ReceiptMsg::sign_single(&receipt, node.address(), &node, &domain).unwrap();
        let image = Tensor::new("x", vec![1, 3, 224, 224], TensorData::Fp32(vec![0.25; 3 * 224 * 224])).unwrap();
        let evidence = DisputeEvidence {
            version: WIRE_VERSION,
            dispute_id: 7,
            node_peer: vec![1, 2, 3],
            record: AuditRecord {
                version: WIRE_VERSION,
                receipt: signed,
                model: ModelRef { name: "orientation".into(), version: Some(1), id: None },
                inputs: vec![image],
                texts: vec![],
                outputs: vec![],
                generation: None,
            },
        };
        let subject = EvidenceSubject {
            chain_id: 31337,
            disputes: Address::repeat_byte(9),
            dispute_id: 7,
            node: node.address(),
            leaf: receipt.leaf(),
        };
        let challenger = alloy::signers::local::PrivateKeySigner::random();
        let parts = EvidencePart::split(&evidence, &subject, &crate::signer::FastSigner::new(&challenger)).unwrap();
        assert!(parts.len() > 1, "an image does not fit one gossip message");
        let announcement = parts[0].check(&subject).unwrap().0;
        for p in &parts {
            assert!(encode(p).len() <= MAX_GOSSIP_BYTES - 1024, "each part fits a gossip message with its envelope");
            assert_eq!(decode::<EvidencePart>(&encode(p), MAX_GOSSIP_BYTES).as_ref(), Ok(p));
            assert_eq!(p.check(&subject), Some((announcement, challenger.address())));
        }
        let mut slots: Vec<Option<Vec<u8>>> = vec![None; parts.len()];
        for p in parts.iter().rev() {
            slots[p.index as usize] = Some(p.bytes.clone());
        }
        assert_eq!(EvidencePart::join(&slots), Some(evidence.clone()), "any order");
        let mut missing = slots;
        missing[1] = None;
        assert_eq!(EvidencePart::join(&missing), None);
        // A part whose bytes were altered, that lies about its place or the whole, or that is about another chain,
        // contract, dispute, node or receipt does not check (or not as the challenger's).
        let mut altered = parts[0].clone();
        altered.bytes[10] ^= 1;
        assert_eq!(altered.check(&subject), None, "bytes that do not hash to their announced hash");
        let mut moved = parts[0].clone();
        moved.index = parts.len() as u32;
        assert_eq!(moved.check(&subject), None, "an index past the end");
        let mut short = parts[0].clone();
        short.bytes.pop();
        assert_eq!(short.check(&subject), None, "fewer bytes than its place holds");
        let mut huge = parts[0].clone();
        huge.total_len = (MAX_EVIDENCE_BYTES + 1) as u32;
        assert_eq!(huge.check(&subject), None);
        let mut rehashed = parts[0].clone();
        rehashed.bytes[10] ^= 1;
        rehashed.part_hashes[0] = alloy::primitives::keccak256(&rehashed.bytes);
        assert_ne!(rehashed.check(&subject).map(|c| c.1), Some(challenger.address()), "hashes are signed");
        for other in [
            EvidenceSubject { chain_id: 1, ..subject },
            EvidenceSubject { disputes: Address::repeat_byte(8), ..subject },
            EvidenceSubject { node: Address::repeat_byte(7), ..subject },
            EvidenceSubject { leaf: B256::repeat_byte(6), ..subject },
        ] {
            assert_ne!(parts[0].check(&other).map(|c| c.1), Some(challenger.address()), "{other:?}");
        }
        assert_eq!(parts[0].check(&EvidenceSubject { dispute_id: 8, ..subject }), None, "another dispute id");
        // The largest part of the largest evidence still fits one gossip message with room for the envelope.
        let count = EvidencePart::count_for(MAX_EVIDENCE_BYTES);
        let largest = EvidencePart {
            total_len: MAX_EVIDENCE_BYTES as u32,
            index: 0,
            part_hashes: vec![B256::repeat_byte(0xff); count],
            bytes: vec![0xff; EVIDENCE_PART_BYTES],
            dispute_id: u64::MAX,
            ..parts[0].clone()
        };
        assert!(encode(&largest).len() <= MAX_GOSSIP_BYTES - 1024, "{} bytes", encode(&largest).len());
    }

    #[test]
    fn audit_requests_bind_validator_peer_and_time() {
        let validator = alloy::signers::local::PrivateKeySigner::random();
        let req = AuditRequest::signed(B256::repeat_byte(1), &[1, 2], 1000, &validator, validator.address()).unwrap();
        assert_eq!(req.verify(&[1, 2], 1010), Ok(validator.address()));
        assert!(req.verify(&[9], 1010).is_err(), "replayed by another peer");
        assert!(req.verify(&[1, 2], 1000 + MAX_AUDIT_SKEW_SECS + 1).is_err(), "stale");
        let mut other = req.clone();
        other.validator = Address::repeat_byte(7);
        assert!(other.verify(&[1, 2], 1000).is_err(), "claims another validator");
        let mut job = req.clone();
        job.job_id = B256::repeat_byte(2);
        assert!(job.verify(&[1, 2], 1000).is_err(), "another job than signed");
        let mut garbage = req;
        garbage.signature = vec![0; 3];
        assert!(garbage.verify(&[1, 2], 1000).is_err());
    }

    #[test]
    fn size_limit_is_checked_before_parsing() {
        let big = vec![0u8; MAX_GOSSIP_BYTES + 1];
        assert_eq!(
            decode::<Advert>(&big, MAX_GOSSIP_BYTES),
            Err(CodecError::TooLarge { size: MAX_GOSSIP_BYTES + 1, limit: MAX_GOSSIP_BYTES })
        );
    }

    #[test]
    fn names_are_versioned() {
        let id = ModelId::of_bytes(b"m");
        assert_eq!(jobs_topic(&id), format!("mlbridge/jobs/{id}/1"));
        assert!(INFER_PROTOCOL.ends_with("/1") && ADVERTS_TOPIC.ends_with("/1") && DISPUTES_TOPIC.ends_with("/1"));
        // Version 2: receipts go by batch (ReceiptBatchGossip), not one ReceiptMsg per message.
        assert_eq!(RECEIPTS_TOPIC, "mlbridge/receipts/2");
    }

    #[test]
    fn a_batch_of_receipts_is_gossiped_within_the_size_limit_and_checked_against_its_root() {
        use crate::receipt::{MAX_BATCH_LEAVES, Receipt, example_receipt};
        let node = alloy::signers::local::PrivateKeySigner::random();
        let domain = crate::eip712::domain(1, Address::repeat_byte(0xcc));
        let receipts: Vec<Receipt> = (0..MAX_BATCH_LEAVES as u64).map(example_receipt).collect();
        let (batch, signed) = ReceiptMsg::sign_batch(&receipts, node.address(), 1, &node, &domain).unwrap();
        let leaves: Vec<B256> = receipts.iter().map(Receipt::leaf).collect();
        let indexed: Vec<(usize, Receipt)> = receipts.iter().cloned().enumerate().collect();
        let msgs = ReceiptBatchGossip::split(&batch, &leaves, &indexed);
        assert!(msgs.len() > 1, "a full batch needs several messages");
        let mut all = Vec::new();
        for m in &msgs {
            let bytes = encode(m);
            assert!(bytes.len() <= MAX_GOSSIP_BYTES, "{} bytes", bytes.len());
            all.extend(decode::<ReceiptBatchGossip>(&bytes, MAX_GOSSIP_BYTES).unwrap().receipts().unwrap());
        }
        assert_eq!(all, signed, "every receipt, with the proof the node gave its client");
        // A batch with gaps (jobs left out): runs of consecutive leaves, each receipt still with its own proof.
        let some: Vec<(usize, Receipt)> = indexed.iter().filter(|(i, _)| i % 3 != 1).cloned().collect();
        let gapped = ReceiptBatchGossip::split(&batch, &leaves, &some);
        let got: Vec<ReceiptMsg> = gapped.iter().flat_map(|m| m.receipts().unwrap()).collect();
        let want: Vec<ReceiptMsg> = some.iter().map(|(i, _)| signed[*i].clone()).collect();
        assert_eq!(got, want);
        // Leaves that do not build the root, a receipt that is not its leaf, an index past the end: refused.
        let mut m = msgs[0].clone();
        m.leaves.swap(0, 2); // siblings hash commutatively: swap across subtrees
        assert_eq!(m.receipts(), Err("root"));
        let mut m = msgs[0].clone();
        m.receipts[0].price = U256::from(1u64);
        assert_eq!(m.receipts(), Err("leaf"));
        let mut m = msgs[0].clone();
        m.first = (MAX_BATCH_LEAVES - 1) as u32;
        assert_eq!(m.receipts(), Err("index"));
        let mut m = msgs[0].clone();
        m.batch.count += 1;
        assert_eq!(m.receipts(), Err("count"));
    }

    #[test]
    fn a_tensor_that_lies_about_its_shape_is_refused() {
        // Hand-build a request whose tensor claims 4 elements but carries 1: decoding must fail, not panic later.
        #[derive(Serialize)]
        struct Raw {
            name: &'static str,
            shape: Vec<i64>,
            data: TensorData,
        }
        #[derive(Serialize)]
        struct RawReq {
            version: u16,
            job_id: B256,
            model: ModelRef,
            inputs: Vec<Raw>,
            voucher: Option<WireVoucher>,
        }
        let raw = RawReq {
            version: 1,
            job_id: B256::ZERO,
            model: ModelRef { name: "m".into(), version: None, id: None },
            inputs: vec![Raw { name: "x", shape: vec![2, 2], data: TensorData::Fp32(vec![1.0]) }],
            voucher: None,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&std::collections::BTreeMap::from([("Infer", &raw)]), &mut bytes).unwrap();
        assert!(matches!(decode::<Request>(&bytes, MAX_REQUEST_BYTES), Err(CodecError::Malformed(_))));
    }
}
