//! Contract bindings generated at compile time from the committed Foundry artifacts in `contracts/artifacts/`
//! (`scripts/artifacts` refreshes them; `scripts/test` fails when they are stale).

#![allow(missing_docs, clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    Staking,
    "../contracts/artifacts/Staking.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    PaymentChannels,
    "../contracts/artifacts/PaymentChannels.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    ValidatorRewards,
    "../contracts/artifacts/ValidatorRewards.json"
);

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    Disputes,
    "../contracts/artifacts/Disputes.json"
);
