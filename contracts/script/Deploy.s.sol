// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {Vm} from "../test/utils/Test.sol";
import {Staking} from "../src/Staking.sol";
import {PaymentChannels} from "../src/PaymentChannels.sol";
import {ValidatorRewards} from "../src/ValidatorRewards.sol";
import {Disputes} from "../src/Disputes.sol";
import {IStaking} from "../src/interfaces/IStaking.sol";
import {IValidatorRewards} from "../src/interfaces/IValidatorRewards.sol";

/// @notice Deploys and wires Staking, ValidatorRewards, PaymentChannels and Disputes, then writes their addresses
///         to `deployments/<chainId>.json` for the node, validator and SDK.
/// @dev forge script script/Deploy.s.sol --rpc-url http://127.0.0.1:8545 --broadcast
///      Parameters come from the environment (defaults in brackets): DEPLOYER_KEY [anvil account 0],
///      MIN_NODE_STAKE [1 ether], MIN_VALIDATOR_STAKE [2 ether], UNBONDING_DELAY [7 days], EPOCH_LENGTH [100 blocks],
///      FEE_BPS [500], CHALLENGE_WINDOW [1 day], MIN_BOND [0.1 ether], BOND_BPS [1000], AUDIT_WINDOW [1 day],
///      REVEAL_WINDOW [1 hour], VOTING_PERIOD [3 days], QUORUM_BPS [5000], SLASH_BPS [5000], CHALLENGER_BPS [2000],
///      BURN_BPS [3000], MIN_STAKE_AGE_BLOCKS [7200, a day of 12 s blocks]. The unbonding delay must exceed audit + reveal + voting windows (Disputes refuses it).
contract Deploy {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));
    uint256 internal constant ANVIL_KEY_0 = 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80;

    /// @notice Deploy everything and write the addresses file.
    /// @return staking The Staking contract.
    /// @return rewards The ValidatorRewards contract.
    /// @return channels The PaymentChannels contract.
    /// @return disputes The Disputes contract.
    function run()
        external
        returns (Staking staking, ValidatorRewards rewards, PaymentChannels channels, Disputes disputes)
    {
        uint256 key = vm.envOr("DEPLOYER_KEY", ANVIL_KEY_0);
        vm.startBroadcast(key);
        staking = new Staking(
            vm.envOr("MIN_NODE_STAKE", uint256(1 ether)),
            vm.envOr("MIN_VALIDATOR_STAKE", uint256(2 ether)),
            vm.envOr("UNBONDING_DELAY", uint256(7 days))
        );
        rewards = new ValidatorRewards(IStaking(address(staking)), vm.envOr("EPOCH_LENGTH", uint256(100)));
        channels = new PaymentChannels(
            IValidatorRewards(address(rewards)),
            vm.envOr("FEE_BPS", uint256(500)),
            vm.envOr("CHALLENGE_WINDOW", uint256(1 days))
        );
        disputes = new Disputes(IStaking(address(staking)), address(channels), _disputeParams());
        staking.setModules(address(disputes), address(rewards));
        vm.stopBroadcast();

        string memory obj = "deployment";
        vm.serializeUint(obj, "chainId", block.chainid);
        vm.serializeUint(obj, "startBlock", block.number);
        vm.serializeAddress(obj, "staking", address(staking));
        vm.serializeAddress(obj, "validatorRewards", address(rewards));
        vm.serializeAddress(obj, "paymentChannels", address(channels));
        string memory json = vm.serializeAddress(obj, "disputes", address(disputes));
        vm.createDir("deployments", true);
        vm.writeJson(json, string.concat("deployments/", vm.toString(block.chainid), ".json"));
    }

    function _disputeParams() internal view returns (Disputes.Params memory) {
        return Disputes.Params({
            minBond: vm.envOr("MIN_BOND", uint256(0.1 ether)),
            bondBps: vm.envOr("BOND_BPS", uint256(1000)),
            auditWindow: vm.envOr("AUDIT_WINDOW", uint256(1 days)),
            revealWindow: vm.envOr("REVEAL_WINDOW", uint256(1 hours)),
            votingPeriod: vm.envOr("VOTING_PERIOD", uint256(3 days)),
            quorumBps: vm.envOr("QUORUM_BPS", uint256(5000)),
            slashBps: vm.envOr("SLASH_BPS", uint256(5000)),
            challengerBps: vm.envOr("CHALLENGER_BPS", uint256(2000)),
            burnBps: vm.envOr("BURN_BPS", uint256(3000)),
            minStakeAgeBlocks: vm.envOr("MIN_STAKE_AGE_BLOCKS", uint256(7200))
        });
    }
}
