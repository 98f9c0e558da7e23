//! Inference receipts: `Receipt{jobId, modelId, inputHash, outputHash, price, node}` signed with EIP-712 by the
//! node's operator key. A receipt is the evidence in a dispute; `Disputes.challenge` verifies it on-chain.

use alloy::primitives::{Address, B256};
use alloy::signers::SignerSync;
use alloy::sol_types::{Eip712Domain, SolStruct};

use crate::voucher::recover;
use crate::{Error, Result};

alloy::sol! {
    /// The EIP-712 receipt type, exactly as `Disputes.RECEIPT_TYPEHASH` defines it.
    #[derive(Debug, PartialEq, Eq)]
    struct Receipt {
        bytes32 jobId;
        bytes32 modelId;
        bytes32 inputHash;
        bytes32 outputHash;
        uint256 price;
        address node;
    }
}

impl Receipt {
    /// The digest the node signs (equals `Disputes.receiptDigest`).
    pub fn digest(&self, domain: &Eip712Domain) -> B256 {
        self.eip712_signing_hash(domain)
    }

    /// Sign as the node operator; returns the 65-byte signature.
    pub fn sign<S: SignerSync>(&self, signer: &S, domain: &Eip712Domain) -> Result<[u8; 65]> {
        let sig = signer.sign_hash_sync(&self.digest(domain)).map_err(|e| Error::Signature(e.to_string()))?;
        Ok(sig.as_bytes())
    }

    /// Whether `signature` is the named node's signature over this receipt.
    pub fn verify(&self, signature: &[u8; 65], domain: &Eip712Domain) -> Result<bool> {
        let signer: Address = recover(&self.digest(domain), signature)?;
        Ok(signer == self.node)
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::U256;
    use alloy::signers::local::PrivateKeySigner;

    use super::*;
    use crate::eip712::domain;

    #[test]
    fn node_signature_verifies_and_tampering_fails() {
        let node = PrivateKeySigner::random();
        let d = domain(31337, Address::repeat_byte(9));
        let mut r = Receipt {
            jobId: B256::repeat_byte(1),
            modelId: B256::repeat_byte(2),
            inputHash: B256::repeat_byte(3),
            outputHash: B256::repeat_byte(4),
            price: U256::from(10u64),
            node: node.address(),
        };
        let sig = r.sign(&node, &d).unwrap();
        assert!(r.verify(&sig, &d).unwrap());
        r.outputHash = B256::repeat_byte(5);
        assert!(!r.verify(&sig, &d).unwrap());
        assert_eq!(
            Receipt::eip712_encode_type(),
            "Receipt(bytes32 jobId,bytes32 modelId,bytes32 inputHash,bytes32 outputHash,uint256 price,address node)"
        );
    }
}
