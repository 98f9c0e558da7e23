//! The validator's side of the chain: its transactions (stake, unbond, withdraw, attest, commit, challenge, vote,
//! resolve, claims), each tracked to N confirmations, and the on-chain state `status` prints.

use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use mlbridge_sdk::chain::bindings::{Disputes, Staking, ValidatorRewards};
use mlbridge_sdk::chain::{ConfirmationTracker, Deployment, SenderConfig, TrackerConfig, TxSender, TxState};

use crate::config::ValidatorConfig;
use crate::{Error, Result};

/// A validator's connection to the contracts, with its key.
#[derive(Clone, Debug)]
pub struct ValidatorChain {
    provider: DynProvider,
    deployment: Deployment,
    address: Address,
    sender: std::sync::Arc<TxSender<DynProvider>>,
    tracker: ConfirmationTracker,
    /// `Staking`.
    pub staking: Staking::StakingInstance<DynProvider>,
    /// `Disputes`.
    pub disputes: Disputes::DisputesInstance<DynProvider>,
    /// `ValidatorRewards`.
    pub rewards: ValidatorRewards::ValidatorRewardsInstance<DynProvider>,
    progress: bool,
}

/// The validator's on-chain state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Its address.
    pub address: Address,
    /// Bonded validator stake, wei.
    pub stake: U256,
    /// Stake unbonding, wei, and when it can be withdrawn (unix seconds).
    pub unbonding: (U256, U256),
    /// Whether it is an active validator.
    pub active: bool,
    /// Its share of all validator stake now, basis points.
    pub share_bps: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Whether it attested the current epoch.
    pub attested: bool,
    /// Rewards claimable now, wei.
    pub pending_rewards: U256,
    /// Rewards claimed in total, wei.
    pub earned: U256,
    /// Dispute credits withdrawable now, wei.
    pub credit: U256,
    /// Wallet balance, wei.
    pub balance: U256,
}

pub(crate) fn rpc(e: impl std::fmt::Display) -> Error {
    Error::from(mlbridge_sdk::Error::Rpc(e.to_string()))
}

impl ValidatorChain {
    /// Connect with `signer`; `progress` prints each transaction's way to its confirmations (command line).
    pub async fn connect(config: &ValidatorConfig, signer: PrivateKeySigner, progress: bool) -> Result<Self> {
        let path = config.deployment.as_deref().ok_or_else(|| Error::Config {
            path: "deployment".into(),
            reason: "give the contracts' addresses file (--deployment contracts/deployments/<chainId>.json)".into(),
        })?;
        let deployment = Deployment::load(path)?;
        let url = config.rpc_url.parse().map_err(|e| Error::Config {
            path: "rpc_url".into(),
            reason: format!("'{}' is not a URL: {e}", config.rpc_url),
        })?;
        let provider = ProviderBuilder::new().connect_http(url).erased();
        deployment.verify(&provider).await?;
        let poll = Duration::from_millis(config.poll_interval_ms.max(10));
        let address = signer.address();
        let sender =
            TxSender::new(provider.clone(), signer, SenderConfig { poll_interval: poll, ..Default::default() }, None)
                .await?;
        let tracker = ConfirmationTracker::spawn(
            provider.clone(),
            TrackerConfig { confirmations: config.confirmations, poll_interval: poll, ..Default::default() },
            None,
        );
        Ok(Self {
            staking: Staking::new(deployment.staking, provider.clone()),
            disputes: Disputes::new(deployment.disputes, provider.clone()),
            rewards: ValidatorRewards::new(deployment.validator_rewards, provider.clone()),
            provider,
            deployment,
            address,
            sender: std::sync::Arc::new(sender),
            tracker,
            progress,
        })
    }

    /// The validator's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The provider.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The deployment.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// Wei a confirmed transaction paid `to`, read from its events (`ValidatorRewards.Claimed`,
    /// `Disputes.VoteRewardClaimed` and `Disputes.CreditWithdrawn`), not inferred from balances read around it.
    pub fn paid_to(&self, receipt: &TransactionReceipt, to: Address) -> U256 {
        let (rewards, disputes) = (self.deployment.validator_rewards, self.deployment.disputes);
        receipt.logs().iter().fold(U256::ZERO, |sum, log| {
            let amount = if log.address() == rewards {
                log.log_decode::<ValidatorRewards::Claimed>()
                    .ok()
                    .filter(|e| e.inner.data.validator == to)
                    .map(|e| e.inner.data.amount)
            } else if log.address() == disputes {
                let claimed = log
                    .log_decode::<Disputes::VoteRewardClaimed>()
                    .ok()
                    .filter(|e| e.inner.data.voter == to)
                    .map(|e| e.inner.data.amount);
                claimed.or_else(|| {
                    log.log_decode::<Disputes::CreditWithdrawn>()
                        .ok()
                        .filter(|e| e.inner.data.account == to)
                        .map(|e| e.inner.data.amount)
                })
            } else {
                None
            };
            sum + amount.unwrap_or_default()
        })
    }

    /// Send `tx` and wait for its confirmations. A contract refusal is an [`Error::Refused`] with the contract's
    /// reason (at estimation, or if it reverted when mined).
    pub async fn transact(&self, what: &str, tx: TransactionRequest) -> Result<TransactionReceipt> {
        let sent = self.sender.send(what, tx).await.map_err(|e| refused(what, e))?;
        if self.progress {
            println!("{what}: {} sent; waiting for confirmations", sent.hash);
        }
        let mut state = self.tracker.track_sent(&sent).await?;
        let final_state = loop {
            let current = *state.borrow_and_update();
            match current {
                TxState::Included { block, .. } if self.progress => println!("{what}: included in block {block}"),
                TxState::Confirmed { .. } | TxState::Dropped => break current,
                _ => {}
            }
            state.changed().await.map_err(|_| Error::from(mlbridge_sdk::Error::TrackerStopped))?;
        };
        let TxState::Confirmed { block, .. } = final_state else {
            return Err(Error::Refused { what: what.into(), reason: "the transaction was dropped".into() });
        };
        let receipt = match self.provider.get_transaction_receipt(sent.hash).await.map_err(rpc)? {
            Some(r) if r.status() => r,
            Some(_) => {
                return Err(Error::Refused { what: what.into(), reason: format!("it reverted in block {block}") });
            }
            // Confirmed by the tracker but unknown to the RPC now (a lagging or reorged backend): not a success.
            None => {
                return Err(Error::from(mlbridge_sdk::Error::Rpc(format!(
                    "{what}: no receipt for {} after its confirmation; check the RPC endpoint",
                    sent.hash
                ))));
            }
        };
        if self.progress {
            println!("{what}: confirmed (block {block})");
        }
        Ok(receipt)
    }

    /// The chain's head block.
    pub async fn head(&self) -> Result<u64> {
        self.provider.get_block_number().await.map_err(rpc)
    }

    /// The validator's state on chain.
    pub async fn status(&self) -> Result<Status> {
        let me = self.address;
        let stake = self.staking.validatorStakeOf(me).call().await.map_err(rpc)?;
        let unbonding = self.staking.unbondingOf(me).call().await.map_err(rpc)?;
        let active = self.staking.isActiveValidator(me).call().await.map_err(rpc)?;
        let all = self.staking.activeValidators().call().await.map_err(rpc)?;
        let epoch = self.rewards.currentEpoch().call().await.map_err(rpc)?;
        Ok(Status {
            address: me,
            stake,
            unbonding: (unbonding.amount, unbonding.releaseAt),
            active,
            share_bps: if all.totalStake.is_zero() {
                0
            } else {
                (stake * U256::from(10_000u64) / all.totalStake).saturating_to()
            },
            epoch: epoch.saturating_to(),
            attested: self.rewards.hasAttested(me, epoch).call().await.map_err(rpc)?,
            pending_rewards: self.rewards.pendingRewards(me).call().await.map_err(rpc)?,
            earned: self.rewards.totalEarned(me).call().await.map_err(rpc)?,
            credit: self.disputes.creditOf(me).call().await.map_err(rpc)?,
            balance: self.provider.get_balance(me).await.map_err(rpc)?,
        })
    }
}

fn refused(what: &str, e: mlbridge_sdk::Error) -> Error {
    match e {
        mlbridge_sdk::Error::Contract(revert) => Error::Refused { what: what.into(), reason: revert.to_string() },
        other => Error::from(other),
    }
}
