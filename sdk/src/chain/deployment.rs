//! A deployed contract set: the addresses file (`contracts/deployments/<chainId>.json`, written by
//! `script/Deploy.s.sol` or [`deploy`]), checks that it matches the chain, and deployment from the committed
//! artifacts.

use std::path::Path;

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use serde::{Deserialize, Serialize};

use super::bindings::{Disputes, PaymentChannels, Staking, ValidatorRewards};
use super::rpc_error;
use crate::{Error, Result};

/// Addresses of the four contracts on one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// The chain.
    pub chain_id: u64,
    /// Block to start scanning events from.
    pub start_block: u64,
    /// `Staking`.
    pub staking: Address,
    /// `ValidatorRewards`.
    pub validator_rewards: Address,
    /// `PaymentChannels` (also the EIP-712 verifying contract).
    pub payment_channels: Address,
    /// `Disputes`.
    pub disputes: Address,
}

/// Constructor parameters of the contract set (defaults equal `script/Deploy.s.sol`'s).
#[derive(Clone, Debug)]
pub struct DeployParams {
    /// Minimum node stake, wei.
    pub min_node_stake: U256,
    /// Minimum validator stake, wei.
    pub min_validator_stake: U256,
    /// Unbonding delay, seconds.
    pub unbonding_delay: U256,
    /// Epoch length, blocks.
    pub epoch_length: U256,
    /// Protocol fee, basis points.
    pub fee_bps: U256,
    /// Channel close window, seconds.
    pub challenge_window: U256,
    /// Minimum dispute bond, wei.
    pub min_bond: U256,
    /// Dispute bond as a share of the slash sought, basis points.
    pub bond_bps: U256,
    /// How long after `issuedAt` a receipt can be challenged, seconds.
    pub audit_window: U256,
    /// How long a challenge commitment can be revealed, seconds.
    pub reveal_window: U256,
    /// Voting period, seconds.
    pub voting_period: U256,
    /// Share of the validator stake that must vote against a node to slash it (strictly more), basis points.
    pub quorum_bps: U256,
    /// Share of stake slashed, basis points.
    pub slash_bps: U256,
    /// Challenger's share of a slash, basis points.
    pub challenger_bps: U256,
    /// Burned share of a slash, basis points.
    pub burn_bps: U256,
    /// Blocks a validator's stake must have been bonded to weigh in a dispute vote.
    pub min_stake_age_blocks: U256,
}

impl DeployParams {
    /// The `Disputes` constructor's parameter struct.
    pub fn disputes(&self) -> Disputes::Params {
        Disputes::Params {
            minBond: self.min_bond,
            bondBps: self.bond_bps,
            auditWindow: self.audit_window,
            revealWindow: self.reveal_window,
            votingPeriod: self.voting_period,
            quorumBps: self.quorum_bps,
            slashBps: self.slash_bps,
            challengerBps: self.challenger_bps,
            burnBps: self.burn_bps,
            minStakeAgeBlocks: self.min_stake_age_blocks,
        }
    }
}

impl Default for DeployParams {
    fn default() -> Self {
        let ether = U256::from(10u64).pow(U256::from(18u64));
        Self {
            min_node_stake: ether,
            min_validator_stake: ether * U256::from(2u64),
            unbonding_delay: U256::from(7 * 24 * 3600u64),
            epoch_length: U256::from(100u64),
            fee_bps: U256::from(500u64),
            challenge_window: U256::from(24 * 3600u64),
            min_bond: ether / U256::from(10u64),
            bond_bps: U256::from(1000u64),
            audit_window: U256::from(24 * 3600u64),
            reveal_window: U256::from(3600u64),
            voting_period: U256::from(3 * 24 * 3600u64),
            quorum_bps: U256::from(5000u64),
            slash_bps: U256::from(5000u64),
            challenger_bps: U256::from(2000u64),
            burn_bps: U256::from(3000u64),
            min_stake_age_blocks: U256::from(7200u64),
        }
    }
}

impl Deployment {
    /// Read an addresses file.
    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::DeploymentFile { path: path.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        serde_json::from_str(&text).map_err(|e| err(format!("not a deployment file: {e}")))
    }

    /// Write an addresses file (the same format `script/Deploy.s.sol` writes).
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |reason: String| Error::DeploymentFile { path: path.to_owned(), reason };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        std::fs::write(path, text + "\n").map_err(|e| err(e.to_string()))
    }

    /// Check that the RPC serves this deployment's chain, that every address holds contract code, and that the
    /// contracts there are wired to each other as [`deploy`] and `script/Deploy.s.sol` wire them (so vouchers
    /// checked against this file are the ones the chain will redeem).
    pub async fn verify<P: Provider + Clone>(&self, provider: &P) -> Result<()> {
        let actual = provider.get_chain_id().await.map_err(rpc_error)?;
        if actual != self.chain_id {
            return Err(Error::ChainIdMismatch { expected: self.chain_id, actual });
        }
        for (name, address) in [
            ("Staking", self.staking),
            ("ValidatorRewards", self.validator_rewards),
            ("PaymentChannels", self.payment_channels),
            ("Disputes", self.disputes),
        ] {
            let code = provider.get_code_at(address).await.map_err(rpc_error)?;
            if code.is_empty() {
                return Err(Error::NoContractAt { name, address });
            }
        }
        self.verify_wiring(provider).await
    }

    async fn verify_wiring<P: Provider + Clone>(&self, provider: &P) -> Result<()> {
        let mismatch = |what: String| Error::DeploymentMismatch { what };
        // A call that reverts or returns garbage means the address holds another contract.
        // A revert or undecodable answer means another contract is there; a transport failure is just the RPC.
        let read = |what: &'static str| {
            move |e: alloy::contract::Error| match e {
                alloy::contract::Error::TransportError(t) if t.as_error_resp().is_none() => rpc_error(t),
                e => mismatch(format!("{what}: {e}")),
            }
        };
        let channels = PaymentChannels::new(self.payment_channels, provider.clone());
        let separator = channels.domainSeparator().call().await.map_err(read("PaymentChannels.domainSeparator"))?;
        if separator != self.domain().separator() {
            return Err(mismatch(format!(
                "PaymentChannels at {} signs in another EIP-712 domain than this file's",
                self.payment_channels
            )));
        }
        let checks = [
            (
                "PaymentChannels.REWARDS",
                channels.REWARDS().call().await.map_err(read("PaymentChannels.REWARDS"))?,
                self.validator_rewards,
            ),
            (
                "ValidatorRewards.STAKING",
                ValidatorRewards::new(self.validator_rewards, provider.clone())
                    .STAKING()
                    .call()
                    .await
                    .map_err(read("ValidatorRewards.STAKING"))?,
                self.staking,
            ),
            (
                "Staking.disputes",
                Staking::new(self.staking, provider.clone())
                    .disputes()
                    .call()
                    .await
                    .map_err(read("Staking.disputes"))?,
                self.disputes,
            ),
            (
                "Disputes.RECEIPT_DOMAIN_CONTRACT",
                Disputes::new(self.disputes, provider.clone())
                    .RECEIPT_DOMAIN_CONTRACT()
                    .call()
                    .await
                    .map_err(read("Disputes.RECEIPT_DOMAIN_CONTRACT"))?,
                self.payment_channels,
            ),
        ];
        for (what, actual, expected) in checks {
            if actual != expected {
                return Err(mismatch(format!("{what} is {actual}, the file says {expected}")));
            }
        }
        Ok(())
    }

    /// The EIP-712 domain of vouchers and receipts on this deployment.
    pub fn domain(&self) -> alloy::sol_types::Eip712Domain {
        crate::eip712::domain(self.chain_id, self.payment_channels)
    }
}

/// Deploy and wire the four contracts from the committed artifacts with the provider's wallet; waits for each
/// receipt. Used by tests and the devnet.
pub async fn deploy<P: Provider + Clone>(provider: &P, params: &DeployParams) -> Result<Deployment> {
    let chain_id = provider.get_chain_id().await.map_err(rpc_error)?;
    let start_block = provider.get_block_number().await.map_err(rpc_error)?;
    let deploy_err = |what: &str, e: alloy::contract::Error| Error::Rpc(format!("deploying {what}: {e}"));
    let staking =
        Staking::deploy(provider.clone(), params.min_node_stake, params.min_validator_stake, params.unbonding_delay)
            .await
            .map_err(|e| deploy_err("Staking", e))?;
    let rewards = ValidatorRewards::deploy(provider.clone(), *staking.address(), params.epoch_length)
        .await
        .map_err(|e| deploy_err("ValidatorRewards", e))?;
    let channels =
        PaymentChannels::deploy(provider.clone(), *rewards.address(), params.fee_bps, params.challenge_window)
            .await
            .map_err(|e| deploy_err("PaymentChannels", e))?;
    let disputes = Disputes::deploy(provider.clone(), *staking.address(), *channels.address(), params.disputes())
        .await
        .map_err(|e| deploy_err("Disputes", e))?;
    staking
        .setModules(*disputes.address(), *rewards.address())
        .send()
        .await
        .map_err(|e| deploy_err("Staking.setModules", e))?
        .get_receipt()
        .await
        .map_err(|e| Error::Rpc(e.to_string()))?;
    Ok(Deployment {
        chain_id,
        start_block,
        staking: *staking.address(),
        validator_rewards: *rewards.address(),
        payment_channels: *channels.address(),
        disputes: *disputes.address(),
    })
}
