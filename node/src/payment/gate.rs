//! The voucher check in front of every paid job, and the bookkeeping after it.
//!
//! [`Gate::authorize`] runs before any work: the channel is confirmed and pays us, is not about to stop being
//! redeemable, the voucher is signed by its payer and stays within the confirmed deposit, and the vouchers we hold
//! cover every job charged on the channel plus this one. The check and the charge happen under one lock per node,
//! so two concurrent jobs can never take the same increment. A job's price is held *in flight* (in memory) until
//! it is answered: [`Gate::record`] then moves it to the channel's `charged` and writes the job record and the
//! channel entry (best voucher, answered charges), and the caller flushes the ledger before the answer leaves;
//! [`Gate::release`] drops the hold of a job that failed. So after a crash the ledger charges only answered jobs,
//! and the credit of jobs that were in flight stays the client's. A refused payment records nothing.
//!
//! Payment intervals (DESIGN.md §3): a voucher may pay ahead, and a job may come with no voucher, naming only its
//! channel: it is charged against the best voucher held, under the same lock, and refused with
//! [`PaymentRefusal::NoCredit`] when that does not cover it. A job that brought a new best voucher is marked
//! ([`Authorization::new_voucher`]): its caller flushes the ledger before answering, so a voucher the client was
//! answered on is never lost; so does a job that only the voucher not yet on disk pays for. (Payers top up before
//! their credit runs out, so the jobs sent while a new voucher is flushed are still paid by the one on disk.) Charges of the other jobs are group-committed (the ledger's periodic flush), so a crash
//! can forget the charges of at most the jobs answered since the last flush — all paid for by vouchers the node
//! holds, so the node can lose at most the work of one credit window, never money it was given.
//!
//! Credit belongs to whoever brought the voucher that paid it: each job names a *spender* (the libp2p peer, whose
//! identity the connection's handshake proves, or an HTTP client's secret credit key), the channel remembers the
//! spender of its best voucher (in the ledger), and only that spender's jobs draw on credit. Anyone else needs a new,
//! higher voucher — which only the payer can sign. A voucher seen on chain or elsewhere buys nothing.
//!
//! Coverage rather than strict succession: a client may have several jobs in flight on one channel, and their
//! vouchers can arrive out of order. The node therefore accepts a voucher when `max(highest held, voucher) >=
//! charged + in flight + price` — the highest voucher it holds always pays for every job it
//! answered, and a replayed or lower voucher adds nothing, so it is refused unless the payer had already paid ahead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::Eip712Domain;
use mlbridge_sdk::protocol::{PaymentRefusal, WireVoucher};
use mlbridge_sdk::voucher::SignedVoucher;

use super::ledger::{ChannelEntry, JobRecord, Ledger};
use super::watcher::{Lookup, Watcher};
use crate::Result;

/// A job's reserved payment.
#[derive(Clone, Debug)]
pub struct Authorization {
    /// The channel.
    pub channel_id: B256,
    /// Price reserved (units x unit price).
    pub price: U256,
    /// Priced units (samples, texts) the job holds.
    pub units: u64,
    /// The best voucher's amount when the job was authorized.
    pub amount: U256,
    /// The job brought a new best voucher: flush the ledger before answering.
    pub new_voucher: bool,
}

#[derive(Debug)]
struct Slot {
    /// What the ledger holds (answered charges only).
    entry: ChannelEntry,
    /// Prices of authorized jobs not yet answered.
    in_flight: U256,
    /// The best voucher amount written by a job that flushes before answering (what a crash cannot lose).
    durable_best: U256,
}

/// The voucher check and its state.
#[derive(Debug)]
pub struct Gate {
    ledger: Ledger,
    watcher: Watcher,
    domain: Eip712Domain,
    payee: Address,
    expiry_margin: u64,
    slots: Mutex<HashMap<B256, Slot>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Gate {
    /// A gate for `payee` (our operator) over the ledger and the chain view.
    pub fn new(ledger: Ledger, watcher: Watcher, domain: Eip712Domain, payee: Address, expiry_margin: u64) -> Self {
        Self { ledger, watcher, domain, payee, expiry_margin, slots: Mutex::new(HashMap::new()) }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The chain view.
    pub fn watcher(&self) -> &Watcher {
        &self.watcher
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<B256, Slot>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Check the payment of a job of `price` — a `voucher`, or the credit on `channel` — and reserve the price.
    /// Nothing is recorded on refusal.
    /// `spender` identifies the requester (see the module docs); `None` can pay only with a new voucher.
    pub fn authorize(
        &self,
        voucher: Option<&WireVoucher>,
        channel: Option<B256>,
        spender: Option<B256>,
        price: U256,
    ) -> Result<Authorization, Box<PaymentRefusal>> {
        self.check(voucher, channel, spender, price, true).map_err(Box::new)
    }

    /// Whether [`Gate::authorize`] would accept a job of `price` now, reserving nothing (the channel's ledger entry
    /// is loaded into memory, as by `authorize`, but no voucher is taken and nothing is recorded): a request
    /// whose work must be done before its real price is known (a prompt to tokenize) is checked with its least
    /// price first, so a payment that cannot pay at all costs the node no work.
    pub fn precheck(
        &self,
        voucher: Option<&WireVoucher>,
        channel: Option<B256>,
        spender: Option<B256>,
        price: U256,
    ) -> Result<(), Box<PaymentRefusal>> {
        self.check(voucher, channel, spender, price, false).map(|_| ()).map_err(Box::new)
    }

    #[allow(clippy::result_large_err)] // boxed once by `authorize`
    fn check(
        &self,
        voucher: Option<&WireVoucher>,
        channel: Option<B256>,
        spender: Option<B256>,
        price: U256,
        reserve: bool,
    ) -> Result<Authorization, PaymentRefusal> {
        let channel = match (voucher, channel) {
            (Some(v), _) => v.channel_id,
            (None, Some(c)) => c,
            (None, None) => return Err(PaymentRefusal::Required { price, payee: self.payee }),
        };
        let view = match self.watcher.lookup(&channel) {
            Lookup::Confirmed(view) => view,
            Lookup::Unconfirmed { have } => {
                return Err(PaymentRefusal::Unconfirmed { channel, have, need: self.watcher.confirmations() });
            }
            Lookup::Foreign { payee } => return Err(PaymentRefusal::WrongPayee { channel, payee, node: self.payee }),
            Lookup::Unknown => return Err(PaymentRefusal::UnknownChannel { channel, payee: self.payee }),
        };
        if view.payee != self.payee {
            return Err(PaymentRefusal::WrongPayee { channel, payee: view.payee, node: self.payee });
        }
        let deadline = view.deadline();
        if deadline <= now_ms() / 1000 + self.expiry_margin {
            return Err(PaymentRefusal::Expiring { channel, deadline });
        }
        if let Some(v) = voucher {
            let signed =
                SignedVoucher { channel_id: channel, cumulative_amount: v.cumulative_amount, signature: v.signature };
            let signer = signed.signer(&self.domain).unwrap_or(Address::ZERO);
            if signer != view.payer {
                return Err(PaymentRefusal::BadSignature { channel, signer, payer: view.payer });
            }
            if v.cumulative_amount > view.deposit {
                return Err(PaymentRefusal::OverDeposit {
                    channel,
                    amount: v.cumulative_amount,
                    deposit: view.deposit,
                });
            }
        }
        let mut slots = self.slots();
        let slot = match slots.entry(channel) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                // A read error is never a fresh channel: that would accept old vouchers again and could persist a
                // lower best voucher over the real one.
                let stored = self.ledger.channel(&channel).map_err(|e| {
                    tracing::error!(target: "node::payment", %channel, err = %e, "cannot read the channel's ledger entry");
                    PaymentRefusal::Unavailable { reason: "the node's payment ledger cannot be read".into() }
                })?;
                let entry = stored.unwrap_or_else(|| ChannelEntry {
                    channel_id: channel,
                    payer: view.payer,
                    ..ChannelEntry::default()
                });
                let durable_best = entry.best_amount;
                vacant.insert(Slot { entry, in_flight: U256::ZERO, durable_best })
            }
        };
        if let Some(reason) = &slot.entry.failed {
            return Err(PaymentRefusal::Unsettleable { channel, reason: reason.clone() });
        }
        // What the chain already paid out is the floor: a ledger behind the chain (a voucher redeemed from memory
        // whose job then failed, a lost or wiped ledger, another node with this key) must not take a voucher seen
        // on chain as new money, nor count work it paid as still owed to the client.
        let (best, charged) = if view.redeemed > slot.entry.best_amount {
            (view.redeemed, slot.entry.charged.max(view.redeemed))
        } else {
            (slot.entry.best_amount, slot.entry.charged)
        };
        let needed = charged + slot.in_flight + price;
        let offered = voucher.map_or(U256::ZERO, |v| v.cumulative_amount);
        let new_voucher = offered > best;
        // Credit already held is drawn on only by the spender of the voucher that paid it.
        let owns = spender.is_some() && slot.entry.spender == spender;
        let covered = if new_voucher {
            offered
        } else if owns {
            best
        } else {
            U256::ZERO
        };
        if covered < needed {
            let needed = needed.max(best + price);
            let Some(v) = voucher else { return Err(PaymentRefusal::NoCredit { channel, needed }) };
            let amount = v.cumulative_amount;
            return Err(if amount == best {
                PaymentRefusal::Replayed { channel, amount, needed }
            } else if amount < best {
                PaymentRefusal::BelowAccepted { channel, amount, accepted: best, needed }
            } else {
                PaymentRefusal::Underpaid { channel, amount, needed, price }
            });
        }
        if !reserve {
            return Ok(Authorization { channel_id: channel, price, units: 1, amount: best, new_voucher });
        }
        // Work the chain paid for counts as charged from now on (a no-op unless the ledger was behind the chain).
        slot.entry.charged = charged;
        slot.in_flight += price;
        if let Some(v) = voucher.filter(|_| new_voucher) {
            slot.entry.best_amount = v.cumulative_amount;
            slot.entry.best_signature = v.signature.to_vec();
            // A voucher brought without a spender (HTTP with no credit key) pays only for its own job; the credit
            // stays with whoever held it (the same payer signed both).
            if spender.is_some() {
                slot.entry.spender = spender;
            }
        }
        slot.entry.deadline = deadline;
        Ok(Authorization { channel_id: channel, price, units: 1, amount: slot.entry.best_amount, new_voucher })
    }

    /// Write the channel's best voucher (and answered charges) to the ledger, without flushing (tests set up
    /// ledger states with it; jobs are written by [`Gate::record`]).
    #[cfg(test)]
    pub(crate) fn persist(&self, auth: &Authorization) -> Result<()> {
        let slots = self.slots();
        let slot = slots.get(&auth.channel_id).expect("an authorized channel has a slot");
        // Written under the lock, so a later state never lands before an earlier one.
        self.ledger.put_channel(&slot.entry)
    }

    /// The job was answered: its price moves from in flight to the channel's charges, and the job record and the
    /// channel entry are written. Returns the best voucher amount when the job must not be answered before it is
    /// on disk (the job brought it, or the vouchers on disk do not cover the job): the caller then flushes before
    /// answering and calls [`Gate::mark_durable`] (otherwise a group commit will do).
    pub fn record(&self, auth: &Authorization, job: &JobRecord) -> Result<Option<U256>> {
        self.ledger.put_job(job)?;
        let mut slots = self.slots();
        let slot = slots.get_mut(&auth.channel_id).expect("an authorized channel has a slot");
        // The ledger first: memory changes only once the new entry is written (a failed write leaves the job held
        // in flight, released by the caller).
        let mut entry = slot.entry.clone();
        entry.charged += auth.price;
        entry.jobs += 1;
        self.ledger.put_channel(&entry)?;
        slot.entry = entry;
        debug_assert!(slot.in_flight >= auth.price, "a job recorded that was not held (released twice?)");
        slot.in_flight = slot.in_flight.saturating_sub(auth.price);
        // The job that brought the best voucher waits for it to be on disk, and so does any job the vouchers on
        // disk do not pay for. A job within the durable voucher's amount is paid whatever a crash loses.
        let unflushed = slot.entry.best_amount > slot.durable_best;
        let waits = unflushed && (auth.new_voucher || slot.entry.charged > slot.durable_best);
        Ok(waits.then_some(slot.entry.best_amount))
    }

    /// A flush covered `channel`'s entry with best voucher `amount` (after [`Gate::record`] asked for one): later
    /// jobs need not wait for a flush until a higher voucher comes.
    pub fn mark_durable(&self, channel: &B256, amount: U256) {
        if let Some(slot) = self.slots().get_mut(channel) {
            slot.durable_best = slot.durable_best.max(amount);
        }
    }

    /// The job failed after authorization: its price is no longer held.
    pub fn release(&self, auth: &Authorization) {
        self.release_part(&auth.channel_id, auth.price);
    }

    /// Part of a job's hold is no longer needed (it cost less than it held): `amount` is released.
    pub fn release_part(&self, channel: &B256, amount: U256) {
        if let Some(slot) = self.slots().get_mut(channel) {
            debug_assert!(slot.in_flight >= amount, "more released than held (released twice?)");
            slot.in_flight = slot.in_flight.saturating_sub(amount);
        }
    }

    /// Prices held for jobs in flight on `channel` (not in the ledger).
    pub fn in_flight(&self, channel: &B256) -> U256 {
        self.slots().get(channel).map_or(U256::ZERO, |s| s.in_flight)
    }

    /// Settlement learned what is redeemed on chain: update the in-memory entry and the ledger.
    pub fn mark_redeemed(&self, channel: &B256, redeemed: U256, block: u64) -> Result<()> {
        self.update_entry(channel, |entry| {
            if redeemed > entry.redeemed {
                entry.redeemed = redeemed;
                entry.redeemed_block = block;
                // Jobs are paid in order of their vouchers; the settled count follows the redeemed amount.
                entry.jobs_settled = if redeemed >= entry.best_amount { entry.jobs } else { entry.jobs_settled };
                // A redemption went through: a passing failure (a lagging RPC, say) is over.
                if !entry.failed_permanently {
                    entry.failed = None;
                }
            }
        })
    }

    /// A reorg deeper than the confirmation depth undid a redemption: the chain's confirmed view shows only
    /// `redeemed` now, so the rest is unredeemed again (and settlement redeems it again).
    pub fn mark_reorged(&self, channel: &B256, redeemed: U256) -> Result<()> {
        self.update_entry(channel, |entry| {
            if redeemed < entry.redeemed {
                entry.redeemed = redeemed;
                entry.redeemed_block = 0;
                entry.jobs_settled = if redeemed.is_zero() { 0 } else { entry.jobs_settled };
            }
        })
    }

    /// Settlement's redemption of the channel was refused: the gate takes no more work on it, and unless the
    /// failure is `permanent` settlement retries it every round (clearing the mark once it goes through).
    pub fn mark_failed(&self, channel: &B256, reason: String, permanent: bool) -> Result<()> {
        self.update_entry(channel, |entry| {
            entry.failed = Some(reason);
            entry.failed_permanently |= permanent;
        })
    }

    fn update_entry(&self, channel: &B256, change: impl FnOnce(&mut ChannelEntry)) -> Result<()> {
        let mut slots = self.slots();
        let mut entry = match slots.get(channel) {
            Some(s) => s.entry.clone(),
            None => match self.ledger.channel(channel)? {
                Some(e) => e,
                None => return Ok(()),
            },
        };
        change(&mut entry);
        self.ledger.put_channel(&entry)?;
        if let Some(s) = slots.get_mut(channel) {
            s.entry = entry;
        }
        Ok(())
    }

    /// Current entries (the ledger's, updated by in-memory state of channels in use).
    pub fn entries(&self) -> Result<Vec<ChannelEntry>> {
        let slots = self.slots();
        let mut out = self.ledger.channels()?;
        for e in &mut out {
            if let Some(s) = slots.get(&e.channel_id) {
                *e = s.entry.clone();
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use alloy::signers::local::PrivateKeySigner;
    use mlbridge_sdk::voucher::Voucher;

    use super::*;
    use crate::payment::watcher::ChannelView;

    const PRICE: u64 = 10;
    /// The client's spender key in these tests.
    const ME: B256 = B256::repeat_byte(0x77);

    struct Setup {
        gate: std::sync::Arc<Gate>,
        payer: PrivateKeySigner,
        domain: Eip712Domain,
        channel: B256,
        _dir: tempfile::TempDir,
    }

    /// A gate over `ledger` whose chain view holds `channel` from `payer` to 0xee..ee (1,000 wei deposited).
    fn gate_over(ledger: Ledger, payer: &PrivateKeySigner, channel: B256, domain: &Eip712Domain) -> Gate {
        gate_redeemed(ledger, payer, channel, domain, U256::ZERO)
    }

    /// [`gate_over`] with `redeemed` already paid out on chain.
    fn gate_redeemed(
        ledger: Ledger,
        payer: &PrivateKeySigner,
        channel: B256,
        domain: &Eip712Domain,
        redeemed: U256,
    ) -> Gate {
        let payee = Address::repeat_byte(0xee);
        let view = ChannelView {
            payer: payer.address(),
            payee,
            deposit: U256::from(1_000u64),
            redeemed,
            expiry: u64::MAX / 2,
            closes_at: 0,
            withdrawn: false,
        };
        Gate::new(ledger, Watcher::fixed([(channel, view)], 3), domain.clone(), payee, 60)
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let payer = PrivateKeySigner::random();
        let channel = B256::repeat_byte(1);
        let domain = mlbridge_sdk::eip712::domain(31337, Address::repeat_byte(0xcc));
        let gate = gate_over(Ledger::open(dir.path()).unwrap(), &payer, channel, &domain);
        Setup { gate: std::sync::Arc::new(gate), payer, domain, channel, _dir: dir }
    }

    fn voucher(s: &Setup, amount: u64) -> WireVoucher {
        let v = Voucher::new(s.channel, U256::from(amount)).sign(&s.payer, &s.domain).unwrap();
        WireVoucher { channel_id: v.channel_id, cumulative_amount: v.cumulative_amount, signature: v.signature }
    }

    /// The record of job `id`, authorized as `auth`.
    fn job(id: u8, auth: &Authorization) -> JobRecord {
        JobRecord {
            job_id: B256::repeat_byte(id),
            channel_id: auth.channel_id,
            model_id: B256::ZERO,
            input_hash: B256::ZERO,
            output_hash: B256::ZERO,
            price: auth.price,
            voucher_amount: auth.amount,
            at_ms: 1,
        }
    }

    #[test]
    fn a_precheck_refuses_what_authorize_would_and_holds_nothing() {
        let s = setup();
        let (price, ch) = (U256::from(PRICE), Some(s.channel));
        // An unknown channel, no credit, a forged voucher: refused before any work.
        let unknown = s.gate.precheck(None, Some(B256::repeat_byte(9)), Some(ME), price).unwrap_err();
        assert!(matches!(*unknown, PaymentRefusal::UnknownChannel { .. }), "{unknown}");
        let none = s.gate.precheck(None, ch, Some(ME), price).unwrap_err();
        assert!(matches!(*none, PaymentRefusal::NoCredit { .. }), "{none}");
        let mut forged = voucher(&s, 3 * PRICE);
        forged.cumulative_amount = U256::from(4 * PRICE);
        let forged = s.gate.precheck(Some(&forged), None, Some(ME), price).unwrap_err();
        assert!(matches!(*forged, PaymentRefusal::BadSignature { .. }), "{forged}");
        // A good voucher passes, but is not taken: the job that brings it still finds it new (flushed before its
        // answer), and a precheck reserves no credit.
        let ahead = voucher(&s, PRICE);
        s.gate.precheck(Some(&ahead), None, Some(ME), price).unwrap();
        s.gate.precheck(Some(&ahead), None, Some(ME), price).unwrap();
        let first = s.gate.authorize(Some(&ahead), None, Some(ME), price).unwrap();
        assert!(first.new_voucher);
        assert_eq!(s.gate.in_flight(&s.channel), price);
    }

    #[test]
    fn concurrent_requests_never_take_the_same_increment() {
        let s = setup();
        let v = voucher(&s, PRICE);
        // 16 threads race with the same voucher: exactly one wins.
        let wins: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| scope.spawn(|| s.gate.authorize(Some(&v), None, Some(ME), U256::from(PRICE)).is_ok()))
                .collect();
            handles.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn out_of_order_vouchers_are_covered_and_failed_jobs_cost_nothing() {
        let s = setup();
        let price = U256::from(PRICE);
        // Two jobs in flight; their vouchers arrive highest first.
        let second = s.gate.authorize(Some(&voucher(&s, 2 * PRICE)), None, Some(ME), price).unwrap();
        let first = s.gate.authorize(Some(&voucher(&s, PRICE)), None, Some(ME), price).unwrap();
        // A third with no new money is refused while both are in flight.
        assert!(matches!(
            *s.gate.authorize(Some(&voucher(&s, 2 * PRICE)), None, Some(ME), price).unwrap_err(),
            PaymentRefusal::Replayed { .. }
        ));
        // The first fails: its charge is refunded, so the same amount pays the next job.
        s.gate.release(&first);
        let again = s.gate.authorize(Some(&voucher(&s, PRICE)), None, Some(ME), price).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (id, auth) in [(2, &second), (3, &again)] {
            s.gate.record(auth, &job(id, auth)).unwrap();
            rt.block_on(s.gate.ledger().flush()).unwrap();
        }
        let entry = s.gate.ledger().channel(&s.channel).unwrap().unwrap();
        assert_eq!((entry.jobs, entry.charged, entry.best_amount), (2, U256::from(2 * PRICE), U256::from(2 * PRICE)));
        assert!(matches!(
            *s.gate.authorize(Some(&voucher(&s, 2 * PRICE + PRICE / 2)), None, Some(ME), price).unwrap_err(),
            PaymentRefusal::Underpaid { .. }
        ));
        assert!(matches!(
            *s.gate.authorize(Some(&voucher(&s, 1_001)), None, Some(ME), price).unwrap_err(),
            PaymentRefusal::OverDeposit { .. }
        ));
    }

    #[test]
    fn credit_paid_ahead_serves_only_its_spender_until_it_is_used_up() {
        let s = setup();
        let (price, ch) = (U256::from(PRICE), Some(s.channel));
        let stranger = Some(B256::repeat_byte(0x88));
        let ahead = voucher(&s, 3 * PRICE);
        let first = s.gate.authorize(Some(&ahead), None, Some(ME), price).unwrap();
        assert!(first.new_voucher, "a new best voucher: flushed before the answer");
        let second = s.gate.authorize(None, ch, Some(ME), price).unwrap();
        assert!(!second.new_voucher, "drawn on credit: group-committed");
        // Nobody else draws on it, not even by showing the voucher that paid it (it may be public on chain).
        let refusal = s.gate.authorize(None, ch, stranger, price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::NoCredit { .. }), "{refusal}");
        let refusal = s.gate.authorize(Some(&ahead), None, stranger, price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::Replayed { .. }), "{refusal}");
        assert!(s.gate.authorize(None, ch, None, price).is_err(), "no spender: no credit");
        let third = s.gate.authorize(None, ch, Some(ME), price).unwrap();
        // Three jobs in flight use all three prices: the next needs a voucher of at least 4 prices.
        let refusal = s.gate.authorize(None, ch, Some(ME), price).unwrap_err();
        assert!(
            matches!(*refusal, PaymentRefusal::NoCredit { needed, .. } if needed == U256::from(4 * PRICE)),
            "{refusal}"
        );
        // A failed job's hold comes back as credit.
        s.gate.release(&third);
        s.gate.authorize(None, ch, Some(ME), price).unwrap();
        let refusal = s.gate.authorize(None, None, Some(ME), price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::Required { .. }), "neither a voucher nor a channel");
        // A new voucher from another spender (only the payer can sign one) moves the credit to it.
        s.gate.authorize(Some(&voucher(&s, 5 * PRICE)), None, stranger, price).unwrap();
        s.gate.authorize(None, ch, stranger, price).unwrap();
        let refusal = s.gate.authorize(None, ch, Some(ME), price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::NoCredit { .. }), "{refusal}");
        // A voucher brought without a spender (HTTP, no credit key) pays its own job; the credit stays with its holder.
        s.gate.authorize(Some(&voucher(&s, 8 * PRICE)), None, None, price).unwrap();
        s.gate.authorize(None, ch, stranger, price).unwrap();
    }

    #[test]
    fn jobs_wait_for_a_flush_when_they_brought_the_voucher_or_only_it_pays_them() {
        let s = setup();
        let price = U256::from(PRICE);
        let wei = |jobs: u64| U256::from(jobs * PRICE);
        // A brings a voucher for 4 jobs, B runs on its credit and finishes first: both must flush before answering
        // (nothing on disk pays B).
        let a = s.gate.authorize(Some(&voucher(&s, 4 * PRICE)), None, Some(ME), price).unwrap();
        let b = s.gate.authorize(None, Some(s.channel), Some(ME), price).unwrap();
        assert_eq!(s.gate.record(&b, &job(2, &b)).unwrap(), Some(wei(4)));
        assert_eq!(s.gate.record(&a, &job(1, &a)).unwrap(), Some(wei(4)));
        // Once a flush covered it, later jobs on the same voucher are group-committed.
        s.gate.mark_durable(&s.channel, wei(4));
        let c = s.gate.authorize(None, Some(s.channel), Some(ME), price).unwrap();
        assert_eq!(s.gate.record(&c, &job(3, &c)).unwrap(), None);
        // A top-up (8 jobs) arrives while 1 job of credit on disk is left. E, sent meanwhile and answered first, is
        // paid by the voucher on disk: no wait. D brought the new voucher: waits. F is beyond what is on disk: waits.
        let d = s.gate.authorize(Some(&voucher(&s, 8 * PRICE)), None, Some(ME), price).unwrap();
        let e = s.gate.authorize(None, Some(s.channel), Some(ME), price).unwrap();
        assert_eq!(s.gate.record(&e, &job(5, &e)).unwrap(), None);
        assert_eq!(s.gate.record(&d, &job(4, &d)).unwrap(), Some(wei(8)));
        let f = s.gate.authorize(None, Some(s.channel), Some(ME), price).unwrap();
        assert_eq!(s.gate.record(&f, &job(6, &f)).unwrap(), Some(wei(8)));
        s.gate.mark_durable(&s.channel, wei(8));
        let g = s.gate.authorize(None, Some(s.channel), Some(ME), price).unwrap();
        assert_eq!(s.gate.record(&g, &job(7, &g)).unwrap(), None);
    }

    #[test]
    fn a_voucher_already_redeemed_on_chain_buys_nothing_even_when_the_ledger_forgot_it() {
        // The chain paid out 5 prices; this node's ledger knows nothing (wiped, or the redeemed voucher's own job
        // failed before it was written).
        let s = setup();
        let gate = gate_redeemed(s.gate.ledger().clone(), &s.payer, s.channel, &s.domain, U256::from(5 * PRICE));
        let price = U256::from(PRICE);
        let stranger = Some(B256::repeat_byte(0x88));
        let refusal = gate.authorize(Some(&voucher(&s, 5 * PRICE)), None, stranger, price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::Replayed { .. }), "the redeemed voucher, replayed: {refusal}");
        let refusal = gate.authorize(Some(&voucher(&s, 3 * PRICE)), None, stranger, price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::BelowAccepted { .. }), "{refusal}");
        // New money from the payer buys exactly what it adds beyond what was redeemed: one job, not six.
        gate.authorize(Some(&voucher(&s, 6 * PRICE)), None, Some(ME), price).unwrap();
        let refusal = gate.authorize(None, Some(s.channel), Some(ME), price).unwrap_err();
        assert!(
            matches!(*refusal, PaymentRefusal::NoCredit { needed, .. } if needed == U256::from(7 * PRICE)),
            "{refusal}"
        );
    }

    #[test]
    fn only_the_contracts_v_bytes_pass_the_gate() {
        let s = setup();
        let good = voucher(&s, PRICE);
        for v in [good.signature[64] - 27, good.signature[64] + 8] {
            let mut bad = good.clone();
            bad.signature[64] = v;
            let refusal = s.gate.authorize(Some(&bad), None, Some(ME), U256::from(PRICE)).unwrap_err();
            assert!(matches!(*refusal, PaymentRefusal::BadSignature { .. }), "v = {v}: {refusal}");
        }
        assert_eq!(s.gate.ledger().channel(&s.channel).unwrap(), None, "nothing recorded");
        s.gate.authorize(Some(&good), None, Some(ME), U256::from(PRICE)).unwrap();
    }

    #[test]
    fn a_channel_settlement_failed_on_takes_no_work_until_it_is_redeemed() {
        let s = setup();
        let price = U256::from(PRICE);
        let first = s.gate.authorize(Some(&voucher(&s, PRICE)), None, Some(ME), price).unwrap();
        s.gate.persist(&first).unwrap();
        // A lagging RPC said ChannelNotFound: retried, but no more work meanwhile.
        s.gate.mark_failed(&s.channel, "channel not found".into(), false).unwrap();
        let refusal = s.gate.authorize(Some(&voucher(&s, 2 * PRICE)), None, Some(ME), price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::Unsettleable { .. }), "{refusal}");
        let entry = s.gate.entries().unwrap().pop().unwrap();
        assert_eq!(entry.unredeemed(), price, "still due: settlement retries it");
        // The retry went through: the mark is gone and work resumes.
        s.gate.mark_redeemed(&s.channel, price, 1).unwrap();
        s.gate.authorize(Some(&voucher(&s, 2 * PRICE)), None, Some(ME), price).unwrap();
        // Expired before redemption: permanent, nothing due, never cleared.
        s.gate.mark_failed(&s.channel, "expired".into(), true).unwrap();
        assert_eq!(s.gate.entries().unwrap().pop().unwrap().unredeemed(), U256::ZERO);
        s.gate.mark_redeemed(&s.channel, U256::from(2 * PRICE), 2).unwrap();
        let refusal = s.gate.authorize(Some(&voucher(&s, 3 * PRICE)), None, Some(ME), price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::Unsettleable { .. }), "{refusal}");
    }

    #[test]
    fn a_ledger_read_error_is_an_internal_refusal_not_a_fresh_channel() {
        let s = setup();
        let price = U256::from(PRICE);
        let best = s.gate.authorize(Some(&voucher(&s, 2 * PRICE)), None, Some(ME), price).unwrap();
        s.gate.persist(&best).unwrap();
        let Setup { gate, payer, domain, channel, _dir } = s;
        // The stored entry becomes unreadable (a bad disk, a record from an incompatible version), and a restarted
        // gate (no entries in memory) meets it.
        let ledger = gate.ledger().clone();
        ledger.put_raw_channel(&channel, b"\xff\x00 not cbor");
        let gate = gate_over(ledger, &payer, channel, &domain);
        // The old voucher (already used) must not pass as if the channel were new.
        let old = Voucher::new(channel, price).sign(&payer, &domain).unwrap();
        let old = WireVoucher { channel_id: channel, cumulative_amount: price, signature: old.signature };
        let refusal = gate.authorize(Some(&old), None, Some(ME), price).unwrap_err();
        assert!(matches!(*refusal, PaymentRefusal::Unavailable { .. }), "{refusal}");
        assert!(refusal.is_transient());
        assert!(gate.ledger().channel(&channel).is_err(), "the record was not overwritten");
    }

    #[test]
    fn only_answered_jobs_are_charged_in_the_ledger() {
        let s = setup();
        let price = U256::from(PRICE);
        // Three jobs authorized with vouchers paying ahead; one is answered, two are in flight when the node dies.
        let a = s.gate.authorize(Some(&voucher(&s, PRICE)), None, Some(ME), price).unwrap();
        let _b = s.gate.authorize(Some(&voucher(&s, 2 * PRICE)), None, Some(ME), price).unwrap();
        let _c = s.gate.authorize(Some(&voucher(&s, 3 * PRICE)), None, Some(ME), price).unwrap();
        assert_eq!(s.gate.in_flight(&s.channel), U256::from(3 * PRICE));
        s.gate.record(&a, &job(9, &a)).unwrap();
        let stored = s.gate.ledger().channel(&s.channel).unwrap().unwrap();
        assert_eq!((stored.charged, stored.jobs), (price, 1), "only the answered job is charged");
        assert_eq!(stored.best_amount, U256::from(3 * PRICE), "the best voucher is kept");
        // After a restart (a gate with nothing in memory), the credit of the two unanswered jobs is the client's:
        // the next two jobs need no new voucher.
        let Setup { gate, payer, domain, channel, _dir } = s;
        let restarted = gate_over(gate.ledger().clone(), &payer, channel, &domain);
        let best = Voucher::new(channel, U256::from(3 * PRICE)).sign(&payer, &domain).unwrap();
        let best =
            WireVoucher { channel_id: channel, cumulative_amount: best.cumulative_amount, signature: best.signature };
        restarted.authorize(Some(&best), None, Some(ME), price).unwrap();
        restarted.authorize(Some(&best), None, Some(ME), price).unwrap();
        assert!(matches!(
            *restarted.authorize(Some(&best), None, Some(ME), price).unwrap_err(),
            PaymentRefusal::Replayed { .. }
        ));
    }
}
