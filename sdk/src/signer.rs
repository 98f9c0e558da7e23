//! [`FastSigner`]: a secp256k1 key that signs digests with libsecp256k1.
//!
//! Every paid job costs four ECDSA operations (the payer signs a voucher, the node recovers it, the node signs the
//! receipt, the payer recovers that). With the pure-Rust backend they dominate the cost of a small model's job, so
//! the hot path signs with the C library (and, through the `alloy-primitives/secp256k1` feature, recovers with it
//! too). Signatures are the usual 65 bytes r ‖ s ‖ v with v = 27/28 and a low s, as the contracts require.

use alloy::primitives::{Address, B256, ChainId, Signature};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::{Result as SignerResult, SignerSync};
use secp256k1::{Message, SECP256K1, SecretKey};

/// A signing key backed by libsecp256k1. Cheap to clone; `Debug` shows only the address.
#[derive(Clone)]
pub struct FastSigner {
    key: SecretKey,
    address: Address,
}

impl std::fmt::Debug for FastSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastSigner").field("address", &self.address).finish_non_exhaustive()
    }
}

impl FastSigner {
    /// The same key as `signer`.
    pub fn new(signer: &PrivateKeySigner) -> Self {
        let key = SecretKey::from_byte_array(signer.to_bytes().0).expect("a PrivateKeySigner holds a valid key");
        Self { key, address: signer.address() }
    }

    /// The key's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// Sign a 32-byte digest.
    pub fn sign_digest(&self, digest: &B256) -> Signature {
        let sig = SECP256K1.sign_ecdsa_recoverable(Message::from_digest(digest.0), &self.key);
        Signature::from(sig)
    }
}

impl SignerSync for FastSigner {
    fn sign_hash_sync(&self, hash: &B256) -> SignerResult<Signature> {
        Ok(self.sign_digest(hash))
    }

    fn chain_id_sync(&self) -> Option<ChainId> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_exactly_like_the_reference_signer() {
        let reference = PrivateKeySigner::random();
        let fast = FastSigner::new(&reference);
        assert_eq!(fast.address(), reference.address());
        for i in 0..32u8 {
            let digest = alloy::primitives::keccak256([i]);
            let a = fast.sign_hash_sync(&digest).unwrap();
            let b = reference.sign_hash_sync(&digest).unwrap();
            // RFC 6979 nonces and low-s normalisation in both: the very same bytes.
            assert_eq!(a.as_bytes(), b.as_bytes());
            assert_eq!(a.recover_address_from_prehash(&digest).unwrap(), reference.address());
        }
    }
}
