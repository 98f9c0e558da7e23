//! The EIP-712 domain every ML Bridge signature uses: name `MLBridge`, version `1`, the chain id and the
//! `PaymentChannels` contract. Vouchers ([`crate::voucher`]) and receipts ([`crate::receipt`]) are both signed in it,
//! and the contracts verify them with the same domain (`PaymentChannels.voucherDigest`, `Disputes.receiptDigest`).

use alloy::primitives::Address;
use alloy::sol_types::Eip712Domain;

/// EIP-712 domain name.
pub const DOMAIN_NAME: &str = "MLBridge";
/// EIP-712 domain version.
pub const DOMAIN_VERSION: &str = "1";

/// The ML Bridge domain on `chain_id` with `payment_channels` as verifying contract.
pub fn domain(chain_id: u64, payment_channels: Address) -> Eip712Domain {
    alloy::sol_types::eip712_domain! {
        name: DOMAIN_NAME,
        version: DOMAIN_VERSION,
        chain_id: chain_id,
        verifying_contract: payment_channels,
    }
}
