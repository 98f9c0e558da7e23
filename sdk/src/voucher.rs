//! Payment vouchers: `Voucher{channelId, cumulativeAmount}` signed with EIP-712 by a channel's payer.
//!
//! Each job's voucher carries the running total the payer owes on the channel; the node keeps the highest one and
//! redeems it on-chain (`PaymentChannels.redeem` / `redeemMany`).

use alloy::primitives::{Address, B256, Signature, U256};
use alloy::signers::SignerSync;
use alloy::sol_types::{Eip712Domain, SolStruct};

use crate::{Error, Result};

alloy::sol! {
    /// The EIP-712 voucher type, exactly as `PaymentChannels.VOUCHER_TYPEHASH` defines it.
    #[derive(Debug, PartialEq, Eq)]
    struct Voucher {
        bytes32 channelId;
        uint256 cumulativeAmount;
    }
}

/// A voucher with the payer's 65-byte signature (r, s, v with v = 27/28), as the contract takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedVoucher {
    /// The channel.
    pub channel_id: B256,
    /// Total owed on the channel so far, in wei.
    pub cumulative_amount: U256,
    /// The payer's signature.
    pub signature: [u8; 65],
}

impl Voucher {
    /// A voucher for `channel_id` at `cumulative_amount` wei.
    pub fn new(channel_id: B256, cumulative_amount: U256) -> Self {
        Self { channelId: channel_id, cumulativeAmount: cumulative_amount }
    }

    /// The digest the payer signs (equals `PaymentChannels.voucherDigest`).
    pub fn digest(&self, domain: &Eip712Domain) -> B256 {
        self.eip712_signing_hash(domain)
    }

    /// Sign as the payer.
    pub fn sign<S: SignerSync>(&self, signer: &S, domain: &Eip712Domain) -> Result<SignedVoucher> {
        let sig = signer.sign_hash_sync(&self.digest(domain)).map_err(|e| Error::Signature(e.to_string()))?;
        Ok(SignedVoucher {
            channel_id: self.channelId,
            cumulative_amount: self.cumulativeAmount,
            signature: sig.as_bytes(),
        })
    }
}

impl SignedVoucher {
    /// The address that signed this voucher (the node compares it with the channel's payer).
    pub fn signer(&self, domain: &Eip712Domain) -> Result<Address> {
        recover(&Voucher::new(self.channel_id, self.cumulative_amount).digest(domain), &self.signature)
    }
}

/// A 65-byte `(r, s, v)` signature in the compact EIP-2098 form `(r, vs)` that `PaymentChannels.redeemMany` takes:
/// `s` with `v - 27` in its top bit (`s` is low, so that bit is free).
/// A signature the contract's ECDSA would refuse (a `v` other than 27 or 28, a wrong length) becomes one that
/// recovers nobody (`r` = 0), which the contract refuses naming the channel.
pub fn compact(signature: &[u8]) -> (B256, B256) {
    let mut r = [0u8; 32];
    let mut vs = [0u8; 32];
    if signature.len() == 65 && matches!(signature[64], 27 | 28) {
        r.copy_from_slice(&signature[..32]);
        vs.copy_from_slice(&signature[32..64]);
        if signature[64] == 28 {
            vs[0] |= 0x80;
        }
    }
    (B256::from(r), B256::from(vs))
}

/// Recover the signer of an EIP-712 digest from a 65-byte signature, accepting exactly what the contracts'
/// OpenZeppelin `ECDSA.recover` accepts: `v` of 27 or 28 and a low `s`. Anything else (a `v` of 0/1 or an EIP-155
/// `v`, which recover the same address here but revert on chain) is refused, so no voucher the node holds can make a
/// settlement transaction revert.
pub(crate) fn recover(digest: &B256, signature: &[u8; 65]) -> Result<Address> {
    let v = signature[64];
    if v != 27 && v != 28 {
        return Err(Error::Signature(format!("signature v byte is {v}; the contracts accept only 27 or 28")));
    }
    let sig = Signature::from_raw_array(signature).map_err(|e| Error::Signature(e.to_string()))?;
    if sig.normalize_s().is_some() {
        return Err(Error::Signature("signature has a high s value (malleable); refuse it".into()));
    }
    sig.recover_address_from_prehash(digest).map_err(|e| Error::Signature(e.to_string()))
}

#[cfg(test)]
mod tests {
    use alloy::signers::local::PrivateKeySigner;

    use super::*;
    use crate::eip712::domain;

    #[test]
    fn sign_and_recover_round_trip() {
        let payer = PrivateKeySigner::random();
        let d = domain(31337, Address::repeat_byte(7));
        let v = Voucher::new(B256::repeat_byte(1), U256::from(42u64));
        let signed = v.sign(&payer, &d).unwrap();
        assert_eq!(signed.signer(&d).unwrap(), payer.address());
        // Another domain (chain or contract) recovers someone else.
        assert_ne!(signed.signer(&domain(1, Address::repeat_byte(7))).unwrap(), payer.address());
        assert_ne!(signed.signer(&domain(31337, Address::repeat_byte(8))).unwrap(), payer.address());
    }

    #[test]
    fn only_the_contracts_v_bytes_are_accepted() {
        let payer = PrivateKeySigner::random();
        let d = domain(31337, Address::repeat_byte(7));
        let signed = Voucher::new(B256::repeat_byte(1), U256::from(42u64)).sign(&payer, &d).unwrap();
        assert!(matches!(signed.signature[64], 27 | 28));
        assert_eq!(signed.signer(&d).unwrap(), payer.address());
        // The same (r, s) with v as 0/1 or EIP-155 (35+) recovers the payer in plain secp256k1 but reverts on chain.
        for v in [signed.signature[64] - 27, signed.signature[64] + 10, 0, 1, 29, 255] {
            let mut bad = signed.clone();
            bad.signature[64] = v;
            assert!(bad.signer(&d).is_err(), "v = {v} must be refused");
        }
    }

    #[test]
    fn type_hash_matches_the_contract() {
        assert_eq!(Voucher::eip712_encode_type(), "Voucher(bytes32 channelId,uint256 cumulativeAmount)");
    }
}
