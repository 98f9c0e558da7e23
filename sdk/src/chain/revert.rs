//! Contract reverts decoded into typed errors with readable messages.

use alloy::primitives::{U256, utils::format_ether};
use alloy::sol_types::SolInterface;

use super::bindings::{Disputes, PaymentChannels, Staking, ValidatorRewards};

/// A revert from one of our contracts, decoded from its custom error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractRevert {
    /// `PaymentChannels` refused.
    #[error("{}", describe_channels(.0))]
    PaymentChannels(PaymentChannels::PaymentChannelsErrors),
    /// `Staking` refused.
    #[error("staking refused: {0:?}")]
    Staking(Staking::StakingErrors),
    /// `ValidatorRewards` refused.
    #[error("validator rewards refused: {0:?}")]
    ValidatorRewards(ValidatorRewards::ValidatorRewardsErrors),
    /// `Disputes` refused.
    #[error("disputes refused: {0:?}")]
    Disputes(Disputes::DisputesErrors),
}

impl ContractRevert {
    /// Decode revert data from any of our contracts; `None` if it is none of their errors.
    pub fn decode(data: &[u8]) -> Option<Self> {
        if let Ok(e) = PaymentChannels::PaymentChannelsErrors::abi_decode(data) {
            return Some(Self::PaymentChannels(e));
        }
        if let Ok(e) = Staking::StakingErrors::abi_decode(data) {
            return Some(Self::Staking(e));
        }
        if let Ok(e) = ValidatorRewards::ValidatorRewardsErrors::abi_decode(data) {
            return Some(Self::ValidatorRewards(e));
        }
        Disputes::DisputesErrors::abi_decode(data).ok().map(Self::Disputes)
    }
}

fn eth(v: U256) -> String {
    format!("{} ETH", format_ether(v))
}

fn describe_channels(e: &PaymentChannels::PaymentChannelsErrors) -> String {
    use PaymentChannels::PaymentChannelsErrors as E;
    match e {
        E::ChannelInsufficientDeposit(x) => format!(
            "channel {} has {} deposited, the voucher needs {}; top up the channel",
            x.channelId,
            eth(x.deposit),
            eth(x.needed)
        ),
        E::ChannelNotFound(x) => format!("channel {} does not exist on this chain", x.channelId),
        E::ChannelExpired(x) => {
            format!(
                "channel {} stopped accepting vouchers at unix time {}; open a new channel",
                x.channelId, x.deadline
            )
        }
        E::ChannelStillOpen(x) => format!("channel {} can be withdrawn from unix time {}", x.channelId, x.deadline),
        E::ChannelNotPayer(x) => format!("only the payer of channel {} may do this, not {}", x.channelId, x.caller),
        E::VoucherInvalidSigner(x) => {
            format!("voucher for channel {} is signed by {}, not by the channel's payer", x.channelId, x.signer)
        }
        E::VoucherPayeeMismatch(x) => format!("channel {} has another payee than the rest of the batch", x.channelId),
        E::ChannelAlreadyClosing(x) => format!("channel {} is already closing", x.channelId),
        other => format!("payment channels refused: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::B256;
    use alloy::sol_types::SolError;

    use super::*;

    #[test]
    fn insufficient_deposit_reads_like_a_sentence() {
        let err = PaymentChannels::ChannelInsufficientDeposit {
            channelId: B256::repeat_byte(0xab),
            deposit: U256::from(10_000_000_000_000_000u64),
            needed: U256::from(20_000_000_000_000_000u64),
        };
        let decoded = ContractRevert::decode(&err.abi_encode()).unwrap();
        let msg = decoded.to_string();
        assert!(
            msg.contains("0.010000000000000000 ETH deposited") && msg.contains("needs 0.020000000000000000 ETH"),
            "{msg}"
        );
        assert!(ContractRevert::decode(&[1, 2, 3, 4]).is_none());
    }
}
