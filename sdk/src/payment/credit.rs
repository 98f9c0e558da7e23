//! Payment intervals on the payer's side (DESIGN.md §3): how far ahead of the answered jobs a payer signs.
//!
//! Per channel the payer knows what it signed (`signed`, the highest voucher), what answered jobs used
//! (`consumed`) and what jobs in flight hold (`in_flight`). A job goes without a voucher while `signed − consumed −
//! in_flight` covers its price with half a window to spare; otherwise the payer signs up to `consumed +
//! max(in_flight + price, window)`. The
//! window starts at one job's price and doubles each time the node has answered a whole window's worth of jobs, up
//! to the [`CreditLimits`] (wei and jobs). So at any moment the payer's unearned exposure — signed but not yet
//! answered — is at most `max(window, jobs in flight + the next job)`: a node that stops answering keeps at most
//! that.
//!
//! A job whose outcome is unknown (a timeout, a dropped connection, a bad receipt) counts as consumed: the node may
//! have charged it, and counting it is the side that never signs less than the node needs. After a restart the
//! payer does not know what the node charged: it counts everything signed as consumed and starts again at one job.

use alloy::primitives::U256;

/// The caps of the credit window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditLimits {
    /// Most wei paid ahead on one channel.
    pub max_wei: U256,
    /// Most jobs (at the current job's price) paid ahead on one channel.
    pub max_jobs: u64,
}

/// One channel's credit as the payer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    /// Highest cumulative amount signed.
    pub signed: U256,
    /// Prices of answered (or possibly charged) jobs, plus everything signed before this process started.
    pub consumed: U256,
    /// Prices of jobs sent and not yet settled either way.
    pub in_flight: U256,
    /// How far ahead the payer may sign now.
    pub window: U256,
    /// Prices answered since the window last grew.
    grown: U256,
    /// Credit was written off once on the node's word (see [`Credit::forget`]).
    written_off: bool,
}

/// What a job needs before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The credit signed ahead covers it: send it without a voucher.
    Covered,
    /// Sign a voucher for this cumulative amount first.
    Sign(U256),
}

impl Credit {
    /// A channel where `signed` was signed before (all of it counted as consumed).
    pub fn resume(signed: U256) -> Self {
        Self {
            signed,
            consumed: signed,
            in_flight: U256::ZERO,
            window: U256::ZERO,
            grown: U256::ZERO,
            written_off: false,
        }
    }

    /// Credit signed and not held by any job.
    pub fn available(&self) -> U256 {
        self.signed.saturating_sub(self.consumed).saturating_sub(self.in_flight)
    }

    /// What a job of `price` needs (`window` starts at the first job's price).
    ///
    /// The payer tops up early: once less than half the window would be left after this job, the job carries a
    /// voucher though the credit still covers it. That voucher reaches the node (and the node's disk) while the
    /// credit already there pays for the jobs sent meanwhile, so they need not wait for it. The amount signed is
    /// the same as when the credit runs out, so the exposure bound does not change.
    pub fn need(&mut self, price: U256) -> Need {
        if self.window.is_zero() {
            self.window = price;
        }
        let available = self.available();
        let target = self.consumed + (self.in_flight + price).max(self.window);
        if available < price || (available - price < self.window / U256::from(2u64) && target > self.signed) {
            return Need::Sign(target);
        }
        Need::Covered
    }

    /// A job of `price` was sent (after [`Credit::need`], with `signed` raised to a voucher signed for it).
    pub fn send(&mut self, price: U256) {
        self.in_flight += price;
    }

    /// A voucher for `amount` was signed.
    pub fn signed_to(&mut self, amount: U256) {
        self.signed = self.signed.max(amount);
    }

    /// The node answered the job (or may have charged it): its price is consumed; the window grows once a whole
    /// window was answered, up to `limits` at this `price`.
    pub fn answered(&mut self, price: U256, limits: CreditLimits) {
        self.answered_part(price, price, limits);
    }

    /// The node answered a job that held `held` and charged `charged` (at most `held`: a generation that stopped
    /// before `max_tokens`): `charged` is consumed, the rest of the hold is free again; the window grows as in
    /// [`Credit::answered`], at the job's held price.
    pub fn answered_part(&mut self, held: U256, charged: U256, limits: CreditLimits) {
        let (price, charged) = (held, charged.min(held));
        self.in_flight = self.in_flight.saturating_sub(price);
        self.consumed += charged;
        self.grown += charged;
        if self.grown >= self.window {
            let cap = limits.max_wei.min(price.saturating_mul(U256::from(limits.max_jobs.max(1))));
            self.window = self.window.saturating_mul(U256::from(2u64)).min(cap).max(price);
            self.grown = U256::ZERO;
        }
    }

    /// Nothing valid came back for the job, but the node may have charged it: consumed, without growing the window.
    pub fn lost(&mut self, price: U256) {
        self.lost_part(price, price);
    }

    /// A job that held `held` ended without a valid answer, but what it charged is known: `consumed` (at most
    /// `held`) counts as consumed, without growing the window.
    pub fn lost_part(&mut self, held: U256, consumed: U256) {
        self.in_flight = self.in_flight.saturating_sub(held);
        self.consumed += consumed.min(held);
    }

    /// The node says it has no credit left that this payer counted on (even after its last voucher was sent
    /// again). The payer cannot check that, so it believes it once per channel: everything signed counts as
    /// consumed (jobs in flight keep their holds) and the window starts again at one job, so the next job signs a
    /// new voucher. Returns `false` when it was believed before: a node that keeps saying so gets nothing more.
    pub fn forget(&mut self) -> bool {
        if std::mem::replace(&mut self.written_off, true) {
            return false;
        }
        self.consumed = self.signed.saturating_sub(self.in_flight);
        self.window = U256::ZERO;
        self.grown = U256::ZERO;
        true
    }

    /// The node refused the job before any work: nothing was charged.
    pub fn refused(&mut self, price: U256) {
        self.in_flight = self.in_flight.saturating_sub(price);
    }

    /// Signed and not yet answered: what a node that stops answering now would keep.
    pub fn exposure(&self) -> U256 {
        self.signed.saturating_sub(self.consumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CreditLimits = CreditLimits { max_wei: U256::from_limbs([1_000, 0, 0, 0]), max_jobs: 16 };

    fn wei(n: u64) -> U256 {
        U256::from(n)
    }

    /// Run jobs of `price` one at a time; returns how many needed a voucher.
    fn serial(c: &mut Credit, price: U256, jobs: usize) -> usize {
        let mut signed = 0;
        for _ in 0..jobs {
            if let Need::Sign(amount) = c.need(price) {
                assert!(amount > c.signed, "a new voucher always adds");
                c.signed_to(amount);
                signed += 1;
            }
            c.send(price);
            assert!(c.exposure() <= c.window.max(c.in_flight), "exposure within the window");
            c.answered(price, LIMITS);
        }
        signed
    }

    #[test]
    fn the_window_starts_at_one_job_and_doubles_up_to_the_caps() {
        let mut c = Credit::resume(U256::ZERO);
        // The window goes 1, 2, 4, 8, 16 jobs (the job cap); a voucher tops the credit up to a whole window each time
        // less than half of one would be left, so once the window is at its cap: one voucher per 8 jobs.
        assert_eq!(serial(&mut c, wei(10), 1), 1);
        assert_eq!(c.window, wei(20));
        assert_eq!(serial(&mut c, wei(10), 30), 8, "jobs 2, 3, 4, 6, 8, 12, 16, 24");
        assert_eq!(c.window, wei(160), "capped at 16 jobs");
        assert_eq!(serial(&mut c, wei(10), 160), 20);
        // The wei cap binds for a dearer job: 1,000 wei.
        let mut d = Credit::resume(U256::ZERO);
        serial(&mut d, wei(100), 64);
        assert_eq!(d.window, wei(1_000));
    }

    #[test]
    fn a_job_charged_less_than_its_hold_leaves_the_rest_as_credit() {
        let mut c = Credit::resume(U256::ZERO);
        let hold = wei(100);
        let Need::Sign(amount) = c.need(hold) else { panic!("the first job signs") };
        c.signed_to(amount);
        c.send(hold);
        // A generation held 100 and was charged 30 (it stopped early): 70 are credit again.
        c.answered_part(hold, wei(30), LIMITS);
        assert_eq!((c.consumed, c.in_flight), (wei(30), U256::ZERO));
        assert_eq!(c.available(), amount - wei(30));
        // A charge above the hold counts as the hold (the node cannot take more than was held).
        c.send(hold);
        c.answered_part(hold, wei(500), LIMITS);
        assert_eq!(c.consumed, wei(130));
        // An answer refused whose charge is known: that charge is consumed (never more than the hold), and the
        // window does not grow.
        let window = c.window;
        c.send(hold);
        c.lost_part(hold, wei(20));
        assert_eq!((c.consumed, c.in_flight, c.window), (wei(150), U256::ZERO, window));
        c.send(hold);
        c.lost_part(hold, wei(900));
        assert_eq!(c.consumed, wei(250));
    }

    #[test]
    fn exposure_never_exceeds_the_window_or_the_jobs_in_flight() {
        let mut c = Credit::resume(wei(500));
        assert_eq!(c.exposure(), U256::ZERO, "a restart counts what was signed as consumed");
        let price = wei(10);
        serial(&mut c, price, 40);
        // 8 jobs in flight at once, the node answering none: every one is signed for, nothing more.
        for _ in 0..8 {
            if let Need::Sign(a) = c.need(price) {
                c.signed_to(a);
            }
            c.send(price);
        }
        assert!(c.exposure() <= c.window.max(c.in_flight), "{} > max({}, {})", c.exposure(), c.window, c.in_flight);
        // Refused jobs give their hold back; the credit signed for them stays for the next jobs.
        let before = c.signed;
        for _ in 0..8 {
            c.refused(price);
        }
        assert_eq!(c.need(price), Need::Covered);
        assert_eq!(c.signed, before);
        // A node claiming the credit is gone is believed once: the window starts over at one job...
        assert!(c.forget());
        assert_eq!(c.need(price), Need::Sign(c.consumed + price));
        // ...and never again, so a lying node cannot make the payer sign window after window.
        assert!(!c.forget());
    }
}
