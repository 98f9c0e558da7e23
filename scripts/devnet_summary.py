"""The devnet's summary: what the network did, read from the chain (JSON-RPC) and the metrics endpoints, next to what
the client measured (`mlbridge load --report`), with checks that the three agree.

    devnet_summary.py NETWORK.json [--json OUT.json] [--cast PATH]

NETWORK.json (written by scripts/devnet) names the RPC, the deployment, the load report, the nodes (operator, peer,
metrics URL) and the validators (address, metrics URL). Exit status 1 when a check fails.
"""

import argparse
import json
import subprocess
import sys
import urllib.request
from collections import defaultdict
from decimal import Decimal


def rpc(url, method, params):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        reply = json.load(r)
    if "error" in reply:
        raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]


class Chain:
    def __init__(self, url, cast):
        self.url, self.cast = url, cast
        self.head = int(rpc(url, "eth_blockNumber", []), 16)

    def _cast(self, *args):
        return subprocess.run([self.cast, *args], check=True, capture_output=True, text=True).stdout.strip()

    def call(self, to, sig, *args):
        """A view call; returns the result as 32-byte words (ints)."""
        data = self._cast("calldata", sig, *args)
        out = rpc(self.url, "eth_call", [{"to": to, "data": data}, hex(self.head)])[2:]
        return [int(out[i : i + 64], 16) for i in range(0, len(out), 64)]

    def logs(self, address, event):
        topic = self._cast("keccak", event)
        logs = rpc(self.url, "eth_getLogs", [{"address": address, "topics": [topic], "fromBlock": "0x0", "toBlock": hex(self.head)}])
        for log in logs:
            data = log["data"][2:]
            log["words"] = [int(data[i : i + 64], 16) for i in range(0, len(data), 64)]
            log["block"] = int(log["blockNumber"], 16)
        return logs

    def receipt(self, tx):
        return rpc(self.url, "eth_getTransactionReceipt", [tx])


def metrics(url):
    """Prometheus text format: {name: [(labels, value)]}; an unreachable endpoint reads as empty."""
    out = defaultdict(list)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, labels = head, {}
        if "{" in head:
            name, rest = head.split("{", 1)
            for part in rest.rstrip("}").split(","):
                if "=" in part:
                    k, v = part.split("=", 1)
                    labels[k.strip()] = v.strip().strip('"')
        out[name].append((labels, float(value)))
    return out


def total(m, name, **match):
    return sum(v for labels, v in m.get(name, []) if all(labels.get(k) == w for k, w in match.items()))


def by_model(m, name, **match):
    """Sum a per-model series over versions: {model name: value}."""
    out = defaultdict(float)
    for labels, v in m.get(name, []):
        if "model" in labels and all(labels.get(k) == w for k, w in match.items()):
            out[labels["model"].split("/")[0]] += v
    return out


def eth(wei):
    """Wei as ETH with 6 decimals."""
    return f"{Decimal(int(wei)) / Decimal(10**18):.6f}"


class Checks:
    def __init__(self):
        self.items = []

    def same(self, what, a, b, slack=0):
        """a and b agree (to within slack, for wei read from float counters)."""
        ok = abs(float(a) - float(b)) <= slack
        self.items.append({"check": what, "ok": ok, "values": [str(a), str(b)]})

    def within(self, what, value, low, high):
        ok = low <= value <= high
        self.items.append({"check": what, "ok": ok, "values": [str(value), f"[{low}, {high}]"]})


def wei_slack(x):
    # Counters are f64: integers above 2^53 wei (0.009 ETH) lose their last digits.
    return max(1.0, abs(float(x)) * 1e-12)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("network")
    ap.add_argument("--json")
    ap.add_argument("--cast", default="cast")
    args = ap.parse_args()
    net = json.load(open(args.network))
    dep = json.load(open(net["deployment"]))
    load = json.load(open(net["load"]))
    # Metrics first, then the chain head: whatever a metric counts is on chain by then (daemons count a transaction
    # once it has its confirmations), and the chain may be a few blocks ahead of the metrics, never behind.
    node_m = [metrics(n["metrics"]) for n in net["nodes"]]
    validator_m = [metrics(v["metrics"]) for v in net["validators"]]
    chain = Chain(net["rpc"], args.cast)
    checks = Checks()
    channels_addr, rewards_addr = dep["paymentChannels"], dep["validatorRewards"]
    summary = {"head_block": chain.head}

    # The workload, as the client measured it.
    print(f"Workload (client side, mlbridge load): {load['requests']} jobs answered in {load['duration_s']:.1f} s "
          f"({load['rps']:.1f}/s) by {len(net['nodes'])} nodes, {load['errors']} errors, {load['concurrency']} in flight")
    print(f"  {'model':<13} {'requests':>8} {'rps':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'cache hits':>11} {'avg batch':>10}")
    models = {}
    for model, r in load["models"].items():
        hits = sum(by_model(m, "mlbridge_cache_hits_total")[model] for m in node_m)
        misses = sum(by_model(m, "mlbridge_cache_misses_total")[model] for m in node_m)
        batch_sum = sum(by_model(m, "mlbridge_batch_size_sum")[model] for m in node_m)
        batch_count = sum(by_model(m, "mlbridge_batch_size_count")[model] for m in node_m)
        node_answers = sum(by_model(m, "mlbridge_requests_total", outcome=o)[model] for m in node_m for o in ("ok", "cache_hit"))
        hit_ratio = hits / (hits + misses) if hits + misses else 0.0
        avg_batch = batch_sum / batch_count if batch_count else 0.0
        models[model] = dict(r, cache_hit_ratio=hit_ratio, avg_batch=avg_batch, node_answers=node_answers)
        print(f"  {model:<13} {r['requests']:>8} {r['rps']:>7.1f} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{hit_ratio:>10.0%} {avg_batch:>10.2f}")
        checks.within(f"{model}: answers counted by the nodes vs the client's", node_answers, r["requests"],
                      r["requests"] + r["errors"] + load.get("failovers", 0))
    for message, count in load.get("error_messages", {}).items():
        print(f"  error x{count}: {message}")
    summary["models"] = models

    # Payments per node: what the client was charged, what the node counted, what the chain redeemed.
    redemptions = chain.logs(channels_addr, "BatchRedeemed(address,uint256,uint256,uint256,uint256)")
    by_peer = {n["peer"]: n for n in load["nodes"]}
    signed_by_payee = defaultdict(int)
    redeemed_by_payee = defaultdict(int)
    for ch in load["channels"]:
        words = chain.call(channels_addr, "getChannel(bytes32)", ch["channel"])
        payee = ch["payee"].lower()
        signed_by_payee[payee] += int(ch["signed_wei"])
        redeemed_by_payee[payee] += words[5]
    print("\nPaid per node (client: jobs, prices, vouchers signed ahead; node: its metrics; chain: redeemed on its channels)")
    print(f"  {'node':<7} {'kind':<30} {'jobs':>6} {'charged ETH':>12} {'signed ETH':>11} {'credit left':>11} {'redeemed ETH':>13} {'revenue ETH':>12} {'fees ETH':>10}")
    nodes, total_gas, total_jobs, total_fee = [], 0, 0, 0
    for n, m in zip(net["nodes"], node_m):
        op = n["operator"].lower()
        client = by_peer.get(n["peer"], {"jobs": 0, "charged_wei": "0"})
        jobs, charged = client["jobs"], int(client["charged_wei"])
        node_jobs = total(m, "mlbridge_paid_jobs_total")
        node_charged = total(m, "mlbridge_charged_wei_total")
        revenue, fees = total(m, "mlbridge_revenue_wei_total"), total(m, "mlbridge_protocol_fees_wei_total")
        mine = [r for r in redemptions if "0x" + r["topics"][1][-40:] == op]
        chain_amount = sum(r["words"][1] for r in mine)
        chain_fee = sum(r["words"][2] for r in mine)
        gas = 0
        txs = []
        for r in mine:
            rec = chain.receipt(r["transactionHash"])
            g = int(rec["gasUsed"], 16)
            gas += g
            txs.append({"tx": r["transactionHash"], "block": r["block"], "channels": r["words"][0], "amount_wei": str(r["words"][1]),
                        "gas_used": g, "confirmations": chain.head - r["block"] + 1})
        total_gas, total_jobs, total_fee = total_gas + gas, total_jobs + node_jobs, total_fee + chain_fee
        redeemed = redeemed_by_payee[op]
        print(f"  {n['name']:<7} {n['kind']:<30} {jobs:>6} {eth(charged):>12} {eth(signed_by_payee[op]):>11} "
              f"{eth(signed_by_payee[op] - charged):>11} {eth(redeemed):>13} "
              f"{eth(int(revenue)):>12} {eth(int(fees)):>10}")
        # Jobs a node may have charged without the client counting them: failed attempts (errors, failovers).
        slack = load["errors"] + load.get("failovers", 0)
        signed = signed_by_payee[op]
        checks.within(f"{n['name']}: paid jobs counted by the node vs answered to the client", node_jobs, jobs, jobs + slack)
        if slack == 0:
            checks.same(f"{n['name']}: wei charged, node metric vs client", node_charged, charged, wei_slack(charged))
            # Every voucher the client signed came with a job the node answered, and the final redemption took it.
            checks.same(f"{n['name']}: redeemed on chain vs signed by the client", redeemed, signed)
        else:
            checks.within(f"{n['name']}: wei charged, node metric vs client", node_charged, charged - wei_slack(charged), float("inf"))
            checks.within(f"{n['name']}: redeemed on chain within [charged, signed]", redeemed, charged, signed)
        checks.same(f"{n['name']}: channel state (redeemed) vs its BatchRedeemed events", redeemed, chain_amount)
        checks.same(f"{n['name']}: node revenue metric vs redeemed minus fee on chain", revenue, chain_amount - chain_fee,
                    wei_slack(chain_amount))
        checks.same(f"{n['name']}: node protocol-fee metric vs the fees of its redemptions", fees, chain_fee, wei_slack(chain_fee))
        checks.same(f"{n['name']}: node settlement gas metric vs its redemptions' receipts", total(m, "mlbridge_settlement_gas_total"), gas)
        nodes.append({"name": n["name"], "kind": n["kind"], "operator": n["operator"], "jobs": jobs, "charged_wei": str(charged),
                      "signed_wei": str(signed_by_payee[op]), "redeemed_wei": str(redeemed), "revenue_wei": int(revenue),
                      "fees_wei": int(fees), "redemptions": txs, "gas_used": gas})
    print("  (credit left: paid ahead by the client's last voucher for jobs it has not sent yet; a later job on the channel"
          " uses it)")
    summary["nodes"] = nodes

    print(f"\nRedemptions on chain (PaymentChannels.redeemMany; head block {chain.head})")
    for n in nodes:
        for t in n["redemptions"]:
            print(f"  {n['name']:<7} block {t['block']:>5} {t['confirmations']:>4} confirmations  {t['channels']} channel(s) "
                  f"{eth(int(t['amount_wei'])):>10} ETH  gas {t['gas_used']:>7}  {t['tx'][:18]}...")
    n_red = sum(len(n["redemptions"]) for n in nodes)
    per_inf = total_gas / total_jobs if total_jobs else 0.0
    print(f"  {n_red} redemptions, {total_gas} gas for {int(total_jobs)} paid inferences: {per_inf:.2f} gas per inference")
    unconfirmed = [t for n in nodes for t in n["redemptions"] if t["confirmations"] < 3]
    checks.same("redemptions with fewer than 3 confirmations", len(unconfirmed), 0)
    summary.update(redemptions=n_red, gas=total_gas, gas_per_inference=per_inf)

    # Validators: their counters, and the chain's record of their attestations and earnings.
    received, claimed_total = chain.call(rewards_addr, "totals()")
    attested = chain.logs(rewards_addr, "Attested(uint256,address,uint256,bytes32,uint256)")
    claims = chain.logs(rewards_addr, "Claimed(address,uint256,uint256,uint256)")
    checks.same("fees received by ValidatorRewards vs the fees of all redemptions", received, total_fee)
    print(f"\nValidators (fees received by ValidatorRewards: {eth(received)} ETH, claimed {eth(claimed_total)} ETH)")
    print(f"  {'validator':<11} {'stake':>6} {'receipts':>9} {'sampled':>8} {'checked':>8} {'attested':>9} {'earned ETH':>11} {'claimed ETH':>12}")
    validators = []
    # Transactions mined this many blocks before the head have had time to be confirmed and counted by a daemon.
    settled = chain.head - 6
    for v, m in zip(net["validators"], validator_m):
        addr = v["address"].lower()
        mine = [a for a in attested if "0x" + a["topics"][2][-40:] == addr]
        my_claims = [c for c in claims if "0x" + c["topics"][1][-40:] == addr]
        claimed_chain = sum(c["words"][0] for c in my_claims)
        earned = chain.call(rewards_addr, "totalEarned(address)", v["address"])[0]
        seen = total(m, "mlbridge_validator_receipts_seen_total")
        sampled = total(m, "mlbridge_validator_receipts_sampled_total")
        checked = total(m, "mlbridge_validator_jobs_checked_total")
        print(f"  {v['name']:<11} {v['stake_eth']:>2} ETH {int(seen):>9} {int(sampled):>8} {int(checked):>8} {len(mine):>9} "
              f"{eth(earned):>11} {eth(claimed_chain):>12}")
        checks.same(f"{v['name']}: metrics endpoint read", bool(m), True)
        checks.within(f"{v['name']}: attestations, metric vs Attested events (settled..head)",
                      total(m, "mlbridge_validator_attestations_total"), sum(a["block"] <= settled for a in mine), len(mine))
        low = sum(c["words"][0] for c in my_claims if c["block"] <= settled)
        checks.within(f"{v['name']}: claimed, metric vs Claimed events (settled..head)",
                      total(m, "mlbridge_validator_claimed_wei_total"), low - wei_slack(low), claimed_chain + wei_slack(claimed_chain))
        checks.within(f"{v['name']}: earned a share of the fees", earned, 1, float("inf"))
        checks.within(f"{v['name']}: sampled and re-executed jobs", checked, 1, float("inf"))
        validators.append({"name": v["name"], "address": v["address"], "receipts_seen": seen, "sampled": sampled, "jobs_checked": checked,
                           "attestations": len(mine), "jobs_attested": sum(a["words"][0] for a in mine), "earned_wei": str(earned),
                           "claimed_wei": str(claimed_chain)})
    summary["validators"] = validators

    print("\nEndpoints")
    for n in net["nodes"]:
        print(f"  {n['name']:<11} API {n['api']}  metrics {n['metrics']}")
    for v in net["validators"]:
        print(f"  {v['name']:<11} metrics {v['metrics']}")

    failed = [c for c in checks.items if not c["ok"]]
    print(f"\nChecks: {len(checks.items) - len(failed)} of {len(checks.items)} agree (client report, node and validator metrics, chain)")
    for c in failed:
        print(f"  MISMATCH {c['check']}: {c['values'][0]} vs {c['values'][1]}")
    summary["checks"] = checks.items
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
