//! Inference receipts in the batch format of DESIGN.md §3.
//!
//! A node commits to each answered job with a [`Receipt`] (`jobId, modelId, inputHash, outputHash, units, price,
//! channelId, issuedAt`). Receipts are the leaves of a Merkle tree (leaf = the receipt's EIP-712 struct hash; inner
//! nodes = keccak of the sorted pair, OpenZeppelin's `MerkleProof` layout; an odd last node moves up unchanged), and
//! the node signs one [`ReceiptBatch`]`{root, node, count, issuedAt}` per batch with EIP-712 in the ML Bridge domain.
//! Each answer carries its receipt, its proof and the signed batch (a batch of one has an empty proof, root = leaf).
//! `Disputes.challenge` verifies exactly this on-chain: [`Receipt::leaf`] equals `Disputes.receiptLeaf` and
//! [`ReceiptBatch::digest`] equals `Disputes.batchDigest`.

use alloy::primitives::{Address, B256, keccak256};
use alloy::signers::SignerSync;
use alloy::sol_types::{Eip712Domain, SolStruct};

use crate::voucher::recover;
use crate::{Error, Result};

/// Longest Merkle proof accepted (a batch of 2^32 receipts): bounds the work a hostile answer can cause.
pub const MAX_PROOF_LEN: usize = 32;

/// Most receipts a node signs in one batch (proofs of at most 8 hashes; the batch's leaves fit one gossip message).
pub const MAX_BATCH_LEAVES: usize = 256;

alloy::sol! {
    /// One answered job, exactly as `Disputes.RECEIPT_TYPEHASH` defines it. `price` is the job's total charge in wei
    /// (`units` × the unit price); `channelId` is zero for a free job; `issuedAt` is unix seconds.
    #[derive(Debug, PartialEq, Eq)]
    struct Receipt {
        bytes32 jobId;
        bytes32 modelId;
        bytes32 inputHash;
        bytes32 outputHash;
        uint256 units;
        uint256 price;
        bytes32 channelId;
        uint64 issuedAt;
    }

    /// What a node signs once per batch of receipts, exactly as `Disputes.BATCH_TYPEHASH` defines it.
    #[derive(Debug, PartialEq, Eq)]
    struct ReceiptBatch {
        bytes32 root;
        address node;
        uint256 count;
        uint64 issuedAt;
    }
}

/// The EIP-712 type hashes, computed once (every answer hashes a leaf, and a batch digest per batch).
static RECEIPT_TYPEHASH: std::sync::LazyLock<B256> = std::sync::LazyLock::new(|| {
    let r = Receipt {
        jobId: B256::ZERO,
        modelId: B256::ZERO,
        inputHash: B256::ZERO,
        outputHash: B256::ZERO,
        units: alloy::primitives::U256::ZERO,
        price: alloy::primitives::U256::ZERO,
        channelId: B256::ZERO,
        issuedAt: 0,
    };
    r.eip712_type_hash()
});
static BATCH_TYPEHASH: std::sync::LazyLock<B256> = std::sync::LazyLock::new(|| {
    ReceiptBatch { root: B256::ZERO, node: Address::ZERO, count: alloy::primitives::U256::ZERO, issuedAt: 0 }
        .eip712_type_hash()
});

/// Domain separators already computed, by domain (a process talks to one or two deployments).
static SEPARATORS: std::sync::LazyLock<std::sync::RwLock<Vec<(Eip712Domain, B256)>>> =
    std::sync::LazyLock::new(Default::default);

fn separator(domain: &Eip712Domain) -> B256 {
    if let Some((_, s)) =
        SEPARATORS.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().find(|(d, _)| d == domain)
    {
        return *s;
    }
    let s = domain.separator();
    let mut all = SEPARATORS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    if all.len() < 16 {
        all.push((domain.clone(), s));
    }
    s
}

fn word_u64(v: u64) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[24..].copy_from_slice(&v.to_be_bytes());
    w
}

impl Receipt {
    /// The Merkle leaf: the EIP-712 struct hash (equals `Disputes.receiptLeaf`), with the type hash computed once.
    pub fn leaf(&self) -> B256 {
        let mut buf = [0u8; 32 * 9];
        let words: [[u8; 32]; 9] = [
            RECEIPT_TYPEHASH.0,
            self.jobId.0,
            self.modelId.0,
            self.inputHash.0,
            self.outputHash.0,
            self.units.to_be_bytes(),
            self.price.to_be_bytes(),
            self.channelId.0,
            word_u64(self.issuedAt),
        ];
        for (chunk, w) in buf.chunks_mut(32).zip(words) {
            chunk.copy_from_slice(&w);
        }
        keccak256(buf)
    }
}

impl From<&Receipt> for crate::chain::bindings::Disputes::Receipt {
    fn from(r: &Receipt) -> Self {
        Self {
            jobId: r.jobId,
            modelId: r.modelId,
            inputHash: r.inputHash,
            outputHash: r.outputHash,
            units: r.units,
            price: r.price,
            channelId: r.channelId,
            issuedAt: r.issuedAt,
        }
    }
}

impl From<&ReceiptBatch> for crate::chain::bindings::Disputes::ReceiptBatch {
    fn from(b: &ReceiptBatch) -> Self {
        Self { root: b.root, node: b.node, count: b.count, issuedAt: b.issuedAt }
    }
}

impl ReceiptBatch {
    /// The digest the node signs (equals `Disputes.batchDigest`); the type hash and the domain separator are
    /// computed once.
    pub fn digest(&self, domain: &Eip712Domain) -> B256 {
        let mut node = [0u8; 32];
        node[12..].copy_from_slice(self.node.as_slice());
        let mut buf = [0u8; 32 * 5];
        let words: [[u8; 32]; 5] =
            [BATCH_TYPEHASH.0, self.root.0, node, self.count.to_be_bytes(), word_u64(self.issuedAt)];
        for (chunk, w) in buf.chunks_mut(32).zip(words) {
            chunk.copy_from_slice(&w);
        }
        let mut signing = [0u8; 66];
        signing[..2].copy_from_slice(&[0x19, 0x01]);
        signing[2..34].copy_from_slice(separator(domain).as_slice());
        signing[34..].copy_from_slice(keccak256(buf).as_slice());
        keccak256(signing)
    }

    /// Sign as the node operator; returns the 65-byte signature.
    pub fn sign<S: SignerSync>(&self, signer: &S, domain: &Eip712Domain) -> Result<[u8; 65]> {
        let sig = signer.sign_hash_sync(&self.digest(domain)).map_err(|e| Error::Signature(e.to_string()))?;
        Ok(sig.as_bytes())
    }

    /// Whether `signature` is the named node's signature over this batch (canonical low-s signatures only).
    pub fn verify(&self, signature: &[u8; 65], domain: &Eip712Domain) -> bool {
        recover(&self.digest(domain), signature).is_ok_and(|signer: Address| signer == self.node)
    }
}

/// A receipt whose job id is `i` and every other field fixed: for tests (here, in the node and the validator).
#[doc(hidden)]
pub fn example_receipt(i: u64) -> Receipt {
    Receipt {
        jobId: B256::from(alloy::primitives::U256::from(i)),
        modelId: B256::repeat_byte(2),
        inputHash: B256::repeat_byte(3),
        outputHash: B256::repeat_byte(4),
        units: alloy::primitives::U256::from(1u64),
        price: alloy::primitives::U256::from(10u64),
        channelId: B256::repeat_byte(5),
        issuedAt: 1_700_000_000,
    }
}

/// keccak256 of the sorted pair (OpenZeppelin `Hashes.commutativeKeccak256`).
pub fn hash_pair(a: B256, b: B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

/// The root a proof leads to from `leaf` (OpenZeppelin `MerkleProof.processProof`).
pub fn process_proof(proof: &[B256], leaf: B256) -> B256 {
    proof.iter().fold(leaf, |acc, sibling| hash_pair(acc, *sibling))
}

/// A Merkle tree over receipt leaves, built the way `Disputes` verifies it.
#[derive(Clone, Debug)]
pub struct MerkleTree {
    /// levels[0] = leaves, last = [root].
    levels: Vec<Vec<B256>>,
}

impl MerkleTree {
    /// Build the tree of `leaves` (at least one).
    pub fn new(leaves: Vec<B256>) -> Result<Self> {
        if leaves.is_empty() {
            return Err(Error::Signature("a receipt batch needs at least one receipt".into()));
        }
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let level = levels.last().map(Vec::as_slice).unwrap_or_default();
            let next = level.chunks(2).map(|pair| if pair.len() == 2 { hash_pair(pair[0], pair[1]) } else { pair[0] });
            levels.push(next.collect());
        }
        Ok(Self { levels })
    }

    /// The root.
    pub fn root(&self) -> B256 {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or_default()
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    /// Whether the tree has no leaves (never: [`MerkleTree::new`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// The proof of leaf `index` (siblings from the bottom up; an odd last node has none at its level).
    pub fn proof(&self, mut index: usize) -> Vec<B256> {
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(index ^ 1) {
                proof.push(*sibling);
            }
            index /= 2;
        }
        proof
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::U256;
    use alloy::signers::local::PrivateKeySigner;

    use super::*;
    use crate::eip712::domain;

    fn receipt(i: u8) -> Receipt {
        example_receipt(u64::from(i))
    }

    #[test]
    fn type_strings_match_the_contract() {
        assert_eq!(
            Receipt::eip712_encode_type(),
            "Receipt(bytes32 jobId,bytes32 modelId,bytes32 inputHash,bytes32 outputHash,uint256 units,uint256 price,\
             bytes32 channelId,uint64 issuedAt)"
        );
        assert_eq!(
            ReceiptBatch::eip712_encode_type(),
            "ReceiptBatch(bytes32 root,address node,uint256 count,uint64 issuedAt)"
        );
    }

    #[test]
    fn the_fast_hashes_equal_alloys_eip712_ones() {
        for i in 0..8u8 {
            let mut r = receipt(i);
            r.units = U256::from(u64::MAX) * U256::from(i);
            r.issuedAt = u64::MAX - u64::from(i);
            assert_eq!(r.leaf(), r.eip712_hash_struct());
            let b =
                ReceiptBatch { root: r.leaf(), node: Address::repeat_byte(i), count: r.units, issuedAt: r.issuedAt };
            for d in [domain(31337, Address::repeat_byte(9)), domain(1, Address::repeat_byte(i))] {
                assert_eq!(b.digest(&d), b.eip712_signing_hash(&d));
            }
        }
    }

    #[test]
    fn every_leaf_of_every_batch_size_proves_into_its_root_and_nothing_else_does() {
        for n in 1..=70usize {
            let leaves: Vec<B256> = (0..n).map(|i| receipt(i as u8).leaf()).collect();
            let tree = MerkleTree::new(leaves.clone()).unwrap();
            assert_eq!(tree.len(), n);
            for (i, leaf) in leaves.iter().enumerate() {
                let proof = tree.proof(i);
                assert!(proof.len() <= 7, "n={n}: depth");
                assert_eq!(process_proof(&proof, *leaf), tree.root(), "n={n} i={i}");
                if n > 1 {
                    let other = leaves[(i + 1) % n];
                    assert_ne!(process_proof(&proof, other), tree.root(), "n={n} i={i}: another leaf");
                }
            }
        }
        assert!(MerkleTree::new(Vec::new()).is_err());
        assert_eq!(MerkleTree::new(vec![B256::repeat_byte(9)]).unwrap().root(), B256::repeat_byte(9), "batch of one");
    }

    #[test]
    fn batch_signature_verifies_and_tampering_fails() {
        let node = PrivateKeySigner::random();
        let d = domain(31337, Address::repeat_byte(9));
        let batch =
            ReceiptBatch { root: receipt(1).leaf(), node: node.address(), count: U256::from(1u64), issuedAt: 7 };
        let sig = batch.sign(&node, &d).unwrap();
        assert!(batch.verify(&sig, &d));
        assert!(!batch.verify(&sig, &domain(1, Address::repeat_byte(9))), "another chain");
        let mut other = batch.clone();
        other.root = receipt(2).leaf();
        assert!(!other.verify(&sig, &d), "another root");
        let stranger = PrivateKeySigner::random();
        assert!(!batch.verify(&batch.sign(&stranger, &d).unwrap(), &d), "another key");
        // Every field of a receipt changes its leaf.
        let base = receipt(1);
        let mut altered = vec![base.clone(); 8];
        altered[0].jobId = B256::repeat_byte(0xee);
        altered[1].modelId = B256::repeat_byte(0xee);
        altered[2].inputHash = B256::repeat_byte(0xee);
        altered[3].outputHash = B256::repeat_byte(0xee);
        altered[4].units += U256::from(1u64);
        altered[5].price += U256::from(1u64);
        altered[6].channelId = B256::repeat_byte(0xee);
        altered[7].issuedAt += 1;
        for a in altered {
            assert_ne!(a.leaf(), base.leaf());
        }
    }
}
